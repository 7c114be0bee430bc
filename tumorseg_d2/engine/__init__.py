from .hooks import EarlyStopping, ValidationLoss
from .trainer import Trainer, check_num_classes

__all__ = ["EarlyStopping", "Trainer", "ValidationLoss", "check_num_classes"]
