"""Orbax checkpoints that resume exactly, plus the best checkpoint by a validation metric.

``workdir/checkpoints/<step>`` holds the latest states (parameters, optimiser state, BatchNorm
statistics, step and RNG; the data position is a function of the step), ``workdir/best/<step>``
the state with the highest validation metric so far.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not match the model being trained."""


def to_host(tree: Any) -> Any:
    """A host (numpy) copy of a replicated device pytree, safe to save while training goes on."""
    return jax.tree.map(
        lambda a: np.array(a.addressable_data(0)) if isinstance(a, jax.Array) else np.array(a), tree
    )


class Checkpointer:
    """Latest-``keep`` checkpoints for resumption and a best-by-``metric`` checkpoint."""

    def __init__(self, workdir: str, keep: int = 2, metric: str = "val_robust_accuracy"):
        self.workdir = os.path.abspath(workdir)
        self.metric = metric
        self.latest = ocp.CheckpointManager(
            os.path.join(self.workdir, "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )
        self.best = ocp.CheckpointManager(
            os.path.join(self.workdir, "best"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1,
                create=True,
                best_fn=lambda metrics: metrics[metric],
                best_mode="max",
                keep_checkpoints_without_metrics=False,
            ),
        )

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save(self, step: int, state: Any, metrics: dict[str, float] | None = None) -> None:
        """Saves ``state`` (a host pytree) as the latest; with ``metrics``, as a best candidate."""
        if self.latest.latest_step() != step:
            self.latest.save(step, args=ocp.args.StandardSave(state), force=True)
        if metrics is not None and self.best.latest_step() != step:
            self.best.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)

    def restore(self, target: Any, which: str = "latest", step: int | None = None) -> Any:
        """Restores into the structure of ``target``; raises ``CheckpointError`` saying which."""
        manager = self.latest if which == "latest" else self.best
        step = manager.latest_step() if step is None else step
        if which == "best" and step is None:
            step = manager.best_step()
        path = os.path.join(str(manager.directory), str(step))
        if step is None:
            raise CheckpointError(f"no {which} checkpoint in {manager.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            return manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as err:  # orbax raises many types; name the checkpoint in one error
            raise CheckpointError(
                f"checkpoint {path} could not be restored: it is corrupt or was written for a "
                f"different model/optimiser config ({type(err).__name__}: {err}). Use a fresh "
                "--workdir, or delete the checkpoint to start over."
            ) from err

    def best_step(self) -> int | None:
        return self.best.best_step()

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()
