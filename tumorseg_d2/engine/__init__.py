from .hooks import EarlyStopping, ValidationLoss
from .trainer import Trainer, check_num_classes
