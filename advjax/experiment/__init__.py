"""The experiment layer: from a config to a trained and evaluated model, and workdirs.

Above ``advjax.train`` (state, sharded step, checkpoints) and ``advjax.eval`` (suite, reports),
which do not import each other; ``launch/`` only parses flags and calls this layer.

* ``builders``: config -> data splits, model (or ensemble), defense, initial train state.
* ``workdir``: ``config.json``, restoring a checkpoint's variables, the evaluation threat model.
* ``training``: ``train_and_evaluate``, the training loop.
* ``evaluation``: ``evaluate_workdir`` / ``evaluate_saved_model``, the test-set evaluation of a
  workdir or a saved model (``load_model_source`` reads either).
"""

from advjax.experiment.builders import (
    build_defense,
    build_model,
    initial_state,
    load_split,
    load_splits,
)
from advjax.experiment.evaluation import evaluate_saved_model, evaluate_workdir, load_model_source
from advjax.experiment.training import train_and_evaluate
from advjax.experiment.workdir import load_config, restore_variables, threat_settings, write_config

__all__ = [
    "build_defense",
    "build_model",
    "evaluate_saved_model",
    "evaluate_workdir",
    "load_model_source",
    "initial_state",
    "load_config",
    "load_split",
    "load_splits",
    "restore_variables",
    "threat_settings",
    "train_and_evaluate",
    "write_config",
]
