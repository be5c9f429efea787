"""The validation-guided learning-rate schedule of ATLAS (App. B): reduce on plateau, then stop.

ATLAS App. B: "If the validation robust accuracy does not improve for a fixed number of consecutive
epochs (we refer to the number as plateau epoch number), we decrease the learning rate by five. If
the robust accuracy does not improve for ten consecutive epochs, we terminate the training
process." App. B.1 fixes the plateau epoch number to 2.

So ``stop_patience`` counts epochs without improvement since the best one (not reductions), and
the reduction counter restarts after each reduction: with ``patience=2, stop_patience=10`` and no
improvement after epoch ``e``, the learning rate is divided by 5 after epochs ``e+2, e+4, e+6,
e+8``, and training stops after epoch ``e+10``. An improvement (``metric > best + min_delta``)
resets both counters; the learning rate is never raised again.

The state is a pytree of scalars kept in ``TrainState.schedule_state``, so it is
checkpointed with the parameters and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np


class PlateauState(NamedTuple):
    """Scalars (float32 / int32 arrays, so they checkpoint as plain arrays).

    ``lr_scale``: the factor the schedule's learning rate is multiplied by (1, 1/5, 1/25, ...);
    ``best``: the best metric so far (``-inf`` before the first); ``since_best``: evaluations since
    the best one; ``wait``: evaluations without improvement since the last improvement or
    reduction; ``reductions``: how many times the learning rate was divided.
    """

    lr_scale: Any
    best: Any
    since_best: Any
    wait: Any
    reductions: Any


def initial_plateau_state() -> PlateauState:
    return PlateauState(
        lr_scale=np.float32(1.0),
        best=np.float32(-np.inf),
        since_best=np.int32(0),
        wait=np.int32(0),
        reductions=np.int32(0),
    )


@dataclasses.dataclass(frozen=True)
class Plateau:
    """Reduce-on-plateau rule (ATLAS App. B defaults: ``patience=2``, ``factor=5``, stop after 10).

    Attributes:
      patience: evaluations without improvement before the learning rate is divided (>= 1).
      factor: the divisor (> 1).
      stop_patience: evaluations without improvement after which training stops (0: never).
      min_delta: an improvement must exceed the best so far by more than this.
      max_reductions: at most this many divisions (0: unlimited).
    """

    patience: int = 2
    factor: float = 5.0
    stop_patience: int = 10
    min_delta: float = 0.0
    max_reductions: int = 0

    def __post_init__(self):
        if int(self.patience) != self.patience or self.patience < 1:
            raise ValueError(f"plateau patience must be an integer >= 1, got {self.patience}")
        if not self.factor > 1.0:
            raise ValueError(
                f"plateau factor must be > 1 (the LR is divided by it), got {self.factor}"
            )
        for name in ("stop_patience", "max_reductions"):
            value = getattr(self, name)
            if int(value) != value or value < 0:
                raise ValueError(f"plateau {name} must be an integer >= 0, got {value}")
        if not self.min_delta >= 0.0:
            raise ValueError(f"plateau min_delta must be >= 0, got {self.min_delta}")

    @classmethod
    def from_config(cls, cfg: Any) -> Plateau:
        """From a mapping with (a subset of) the fields; unknown keys are errors.

        ``enabled`` and ``metric`` (read by the training loop) are allowed and ignored here.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dict(cfg).items() if k not in ("enabled", "metric")}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(
                f"unknown plateau settings {unknown}; valid: enabled, metric, "
                f"{', '.join(sorted(fields))}"
            )
        return cls(**values)

    def update(self, state: PlateauState, metric: float) -> PlateauState:
        return plateau_update(state, metric, self)

    def should_stop(self, state: PlateauState) -> bool:
        return bool(self.stop_patience) and int(state.since_best) >= self.stop_patience


def plateau_update(state: PlateauState, metric: float, rule: Plateau = Plateau()) -> PlateauState:
    """The state after one more evaluation of the guiding metric (higher is better).

    Pure host function. Values are stored as float32/int32, so a metric compares the same way
    whether the state was just computed or restored from a checkpoint.
    """
    metric = np.float32(metric)
    if not np.isfinite(metric):
        raise ValueError(f"the plateau metric must be finite, got {metric}")
    best = np.float32(state.best)
    if metric > best + np.float32(rule.min_delta) or not np.isfinite(best):
        return PlateauState(
            lr_scale=np.float32(state.lr_scale),
            best=metric,
            since_best=np.int32(0),
            wait=np.int32(0),
            reductions=np.int32(state.reductions),
        )
    lr_scale, reductions = np.float32(state.lr_scale), int(state.reductions)
    wait = int(state.wait) + 1
    if wait >= rule.patience and (not rule.max_reductions or reductions < rule.max_reductions):
        lr_scale, reductions, wait = (
            np.float32(lr_scale / np.float32(rule.factor)),
            reductions + 1,
            0,
        )
    return PlateauState(
        lr_scale=lr_scale,
        best=best,
        since_best=np.int32(int(state.since_best) + 1),
        wait=np.int32(wait),
        reductions=np.int32(reductions),
    )
