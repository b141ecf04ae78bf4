# `make demo` and `make test` set up a local virtual environment on first use.
PYTHON     ?= python3
VENV       ?= .venv
# The CPU wheel of torch 2.13.0; elsewhere override, e.g. `make test TORCH_SPEC="torch==2.5.1"`.
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed

.PHONY: setup test demo bench serve clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# A second `make demo` continues runs/mnist (--resume: a finished run only redraws its pictures)
# instead of training it again; `undiffuse train --overwrite` (or deleting runs/mnist) starts over.
demo: $(STAMP)
	$(PY) -m undiffuse train $(if $(wildcard runs/mnist/config.json runs/mnist/checkpoints),--resume)

# The web page over runs/ on http://127.0.0.1:7860/ (SERVE_ARGS="--runs DIR --port N" to change).
serve: $(STAMP)
	$(PY) -m undiffuse serve $(SERVE_ARGS)

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[test,bench]"
	$(PY) bench/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
