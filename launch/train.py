"""Trains a model from a config: ``python -m launch.train --config=FILE:VARIANT --workdir=DIR``.

Rerunning the same command resumes from the latest checkpoint in ``--workdir``. Override any
field with ``--config.a.b=value`` (the config is locked, so a typo is an error).
"""

from __future__ import annotations

from advjax import host

host.configure()  # malloc and XLA:CPU settings, before JAX starts; see advjax/host.py

# ruff: noqa: E402
from absl import app, flags
from ml_collections import config_flags

from advjax.experiment import train_and_evaluate
from launch import console

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    console.configure()
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    console.run(main)
