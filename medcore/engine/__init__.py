"""The training engine: a thin loop with callbacks, DDP, AMP, pickle-free checkpoints and presets.

``Trainer``/``TrainerConfig``/``Callback`` (``trainer``), ``init_distributed`` (``distributed``),
``save_checkpoint``/``load_checkpoint`` (``checkpoint``), ``run_training`` (``run``, what
``medcore train`` calls) and ``prepare_run`` (``run``: cases, split, plan and the preprocessing
cache of a config, shared with the pipeline's ``cache`` stage).
"""

from medcore.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from medcore.engine.distributed import DistContext, ShardedBatchSampler, init_distributed, shutdown_distributed
from medcore.engine.trainer import Callback, Trainer, TrainerConfig

__all__ = ["Callback", "Trainer", "TrainerConfig", "DistContext", "ShardedBatchSampler", "init_distributed",
           "shutdown_distributed", "CheckpointError", "save_checkpoint", "load_checkpoint"]
