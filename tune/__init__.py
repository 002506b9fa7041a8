"""Hyperparameter studies over the diffseg core with Ray Tune, Ray Train and Optuna.

The only package that imports Ray. ``study`` (files), ``stage1`` (shared teachers) and ``report``
read and write plain files; ``worker``, ``trial``, ``searcher`` and ``driver`` hold the Ray parts.
"""
