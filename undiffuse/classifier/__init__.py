"""Noise-conditional classifiers p_phi(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021).

* ``model``: the classifier net (the encoder half of the ADM U-Net), its ``Denoiser``-style wrapper
  ``TimeClassifier``, and its files (``save_classifier`` / ``load_classifier``);
* ``training``: training on noisy images and held-out accuracy by noise level;
* the ``undiffuse train-classifier`` command lives with the other commands, in ``undiffuse.cli_classifier``.

A run directory keeps its classifier in ``RUN/classifier/`` (``model.safetensors`` and
``classifier.json``); ``undiffuse train-classifier --run RUN`` writes it and
``undiffuse.guidance.ClassifierGuidance`` uses it.
"""
from .model import (CLASSIFIER_VERSION, NoisyClassifier, TimeClassifier, default_net_config, load_classifier,
                    save_classifier)
from .training import EVAL_TS, accuracy_by_level, train_classifier, train_run_classifier

__all__ = ["NoisyClassifier", "TimeClassifier", "train_classifier", "save_classifier", "load_classifier",
           "train_run_classifier", "default_net_config", "accuracy_by_level", "EVAL_TS", "CLASSIFIER_VERSION"]
