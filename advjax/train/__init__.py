"""Training: train state, data-parallel steps, optimisers, checkpoints, metrics, the loop."""

from advjax.sharding import make_mesh, replicate, shard_batch
from advjax.train.checkpoint import Checkpointer, CheckpointError
from advjax.train.optim import make_optimizer, make_schedule
from advjax.train.state import TrainState, create_train_state
from advjax.train.step import sharded_train_step, train_step

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "TrainState",
    "create_train_state",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "replicate",
    "shard_batch",
    "sharded_train_step",
    "train_step",
]
