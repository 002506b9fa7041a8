"""Datasets: sources (file layouts), splits, the preprocessing cache, augmentation."""
from .sources import REGISTRY, open_source, data_root
from .splits import Splits, make_splits
from .torchdata import PreparedData, prepare

__all__ = ["REGISTRY", "open_source", "data_root", "Splits", "make_splits", "PreparedData", "prepare"]
