"""Local training and evaluation: one readable loop shared by central runs and clients."""

from fedpeft.training.encode import EncodedData, encode
from fedpeft.training.loop import TrainStats, evaluate, planned_steps, predict, train_local

__all__ = [
    "EncodedData",
    "TrainStats",
    "encode",
    "evaluate",
    "planned_steps",
    "predict",
    "train_local",
]
