"""Datasets: sources (file layouts), splits, the preprocessing cache, augmentation, ground truth."""
from .. import config as _config
from .sources import REGISTRY, check, data_root, dims, open_source
from .splits import Splits, make_splits
from .torchdata import PreparedData, prepare
from .truth import Truth

_config.CHECKS.append(check)  # the dataset table checks its own names

__all__ = ["REGISTRY", "open_source", "data_root", "dims", "Splits", "make_splits", "PreparedData", "prepare",
           "Truth"]
