"""Hyperparameter studies over the diffseg core with Ray Tune, Ray Train and Optuna.

The only package that imports Ray. Plain files, no Ray: ``study`` (study files and the search
space), ``stage1`` (shared pretrained networks), ``paths`` and ``report``. Ray: ``worker`` (the
per-worker training function), ``trial`` (the Tune trainable that runs a TorchTrainer),
``searcher`` (OptunaSearch that records pruned trials), ``progress``, ``driver`` (the Tuner)
and ``overhead`` (a benchmark).
"""
