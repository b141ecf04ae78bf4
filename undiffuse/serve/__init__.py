"""The web page: ``undiffuse serve --runs DIR`` lists the runs under DIR (config, live loss curve,
pictures), samples from them step by step, compares two settings side by side, and shows a cold
run's degradation ladder and restorations (docs/serve.md).

FastAPI and uvicorn are the optional extra ``serve`` (``pip install 'undiffuse[serve]'``); nothing
else in undiffuse imports this package, and ``undiffuse.serve.cli`` imports them only when run.
"""
