"""Training: the Trainer, its hooks, the learning-rate schedule, launching processes, and the
config set-up every command shares (run.py)."""
from .hooks import EarlyStopping, ValidationLoss
from .trainer import Trainer, check_num_classes

__all__ = ["EarlyStopping", "Trainer", "ValidationLoss", "check_num_classes"]
