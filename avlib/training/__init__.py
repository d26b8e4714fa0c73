"""The training loop: epochs, checkpoints, resume, distributed training."""
from avlib.core.exports import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {"fit": "loop", "train_one_epoch": "loop", "set_seed": "loop"})
