"""The experiment layer: from a config to a trained and evaluated model, and workdirs.

Above ``advjax.train`` (state, sharded step, checkpoints) and ``advjax.eval`` (suite, reports),
which do not import each other; ``launch/`` only parses flags and calls this layer.

* ``builders``: config -> data splits, model (or ensemble), defense, initial train state.
* ``workdir``: ``config.json``, restoring a checkpoint's variables, the evaluation threat model.
* ``training``: ``train_and_evaluate``, the training loop.
* ``evaluation``: ``evaluate_workdir``, the test-set evaluation of a workdir.
"""

from advjax.experiment.builders import (
    build_defense,
    build_model,
    initial_state,
    load_split,
    load_splits,
)
from advjax.experiment.evaluation import evaluate_workdir
from advjax.experiment.training import train_and_evaluate
from advjax.experiment.workdir import load_config, restore_variables, threat_settings, write_config

__all__ = [
    "build_defense",
    "build_model",
    "evaluate_workdir",
    "initial_state",
    "load_config",
    "load_split",
    "load_splits",
    "restore_variables",
    "threat_settings",
    "train_and_evaluate",
    "write_config",
]
