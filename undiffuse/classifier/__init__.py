"""Noise-conditional classifiers p_phi(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021).

* ``model``: the classifier net (the encoder half of the ADM U-Net), its ``Denoiser``-style wrapper
  ``TimeClassifier``, and its files (``save_classifier`` / ``load_classifier``);
* ``training``: training on noisy images and held-out accuracy by noise level;
* the ``undiffuse train-classifier`` command lives with the other commands, in ``undiffuse.cli_classifier``
  (re-exported here for the callers that imported it from this module).

A run directory keeps its classifier in ``RUN/classifier/`` (``model.safetensors`` and
``classifier.json``); ``undiffuse train-classifier --run RUN`` writes it and
``undiffuse.guidance.ClassifierGuidance`` uses it.
"""
from .model import (CLASSIFIER_VERSION, NoisyClassifier, TimeClassifier, default_net_config, load_classifier,
                    save_classifier)
from .training import EVAL_TS, accuracy_by_level, train_classifier, train_run_classifier

#: Names of the command module, resolved on first use: ``undiffuse.cli_classifier`` imports this
#: package, so importing it here would be circular.
_CLI_NAMES = ("add_cli", "cmd_train_classifier", "format_accuracy")


def __getattr__(name: str) -> object:
    if name in _CLI_NAMES:
        from .. import cli_classifier

        return getattr(cli_classifier, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["NoisyClassifier", "TimeClassifier", "train_classifier", "save_classifier", "load_classifier",
           "train_run_classifier", "default_net_config", "accuracy_by_level", "format_accuracy", "add_cli",
           "cmd_train_classifier", "EVAL_TS", "CLASSIFIER_VERSION"]
