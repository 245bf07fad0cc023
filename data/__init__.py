"""CIFAR-10/100 data: readers, synthetic data, and the device-resident training pipeline."""
from .datasets import DATASETS, Split, dataset_info, load_splits
from .loader import Batch, EvalLoader, TrainLoader, epoch_generator

__all__ = ["DATASETS", "Split", "dataset_info", "load_splits", "Batch", "EvalLoader", "TrainLoader",
           "epoch_generator"]
