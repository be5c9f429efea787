"""Orbax checkpoints that resume exactly, plus the best checkpoint by a validation metric.

``workdir/checkpoints/<step>`` holds the latest states (parameters, optimiser state, BatchNorm
statistics, step and RNG; the data position is a function of the step), ``workdir/best/<step>``
the state with the highest validation metric so far.

Saves are synchronous: ``save`` returns once the checkpoint is on disk, and a failed write raises
there, in the training thread. (Asynchronous saves failed in a background thread instead, and
left orbax's signalling threads waiting forever, so that the process never exited.)

Faults end in a one-line ``CheckpointError`` that names the path and what to do:

* ``check_writable`` (training only) fails at the start when ``checkpoints/`` or ``best/`` cannot
  be written. Reading (``restore``) creates nothing, so a read-only workdir can be evaluated.
* A checkpoint whose stored tree differs from the target's (orbax's metadata) was written for a
  different model or optimiser config: an error at once. A checkpoint that cannot be read
  (metadata or data) is corrupt: ``load`` skips it for the newest intact step, and with
  ``repair=True`` (training) moves it to ``workdir/corrupt/checkpoints_<step>`` first (never
  deleted). ``check_best`` (training) verifies the best checkpoint and rewrites a corrupt one
  from the latest checkpoint of its step, or moves it aside when there is none.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

MAX_REASON = 200  # characters of an underlying error kept in a CheckpointError


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or written, or does not match the model being trained."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint was written for a different model or optimiser config."""


class CorruptCheckpointError(CheckpointError):
    """The checkpoint's metadata or data cannot be read."""

    def __init__(self, message: str, path: str, reason: str):
        super().__init__(message)
        self.path, self.reason = path, reason


def to_host(tree: Any) -> Any:
    """A host (numpy) copy of a replicated device pytree, safe to save while training goes on."""
    return jax.tree.map(
        lambda a: np.array(a.addressable_data(0)) if isinstance(a, jax.Array) else np.array(a), tree
    )


def short_reason(err: BaseException) -> str:
    """One short clause for an underlying error: its first line, at most ``MAX_REASON`` chars
    (its start and its end, where the most specific cause of a nested error is)."""
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror
    else:
        lines = str(err).strip().splitlines()
        text = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
        text = re.sub(r"\s*\[(tensorstore_spec|source locations)[^=]*=.*$", "", text)
    if len(text) <= MAX_REASON:
        return text
    # Nested errors ("A: B: C") put the most specific cause last: keep both ends.
    head = MAX_REASON * 2 // 5
    return text[:head] + " ... " + text[-(MAX_REASON - head - 5) :]


def _write_advice(err: BaseException, subject: str = "it") -> str:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space or choose another --workdir"
    return f"make {subject} writable or choose another --workdir"


class Checkpointer:
    """Latest-``keep`` checkpoints for resumption and a best-by-``metric`` checkpoint.

    ``create=True`` (training) creates the directories; without it nothing is written unless
    ``save`` is called, so that evaluation works on a read-only workdir.
    """

    def __init__(
        self,
        workdir: str,
        keep: int = 2,
        metric: str = "val_robust_accuracy",
        create: bool = False,
    ):
        self.workdir = os.path.abspath(workdir)
        self.metric, self.keep, self.create = metric, keep, create
        self.latest_dir = os.path.join(self.workdir, "checkpoints")
        self.best_dir = os.path.join(self.workdir, "best")
        _quiet_tensorstore_callbacks()
        self.latest = self._open(self.latest_dir, max_to_keep=keep)
        self._best: ocp.CheckpointManager | None = None
        self._best_error: BaseException | None = None
        self._open_best()

    # -- managers

    def _open(self, directory: str, **options) -> ocp.CheckpointManager:
        try:
            return ocp.CheckpointManager(
                directory,
                item_handlers=ocp.StandardCheckpointHandler(),
                options=ocp.CheckpointManagerOptions(
                    create=self.create, enable_async_checkpointing=False, **options
                ),
            )
        except OSError as err:
            action = "create" if self.create else "read"
            raise CheckpointError(
                f"cannot {action} checkpoint directory {directory} ({short_reason(err)}); "
                f"{_write_advice(err) if self.create else 'check the --workdir'}"
            ) from err

    def _open_best(self) -> None:
        self._best, self._best_error = None, None
        try:
            self._best = self._open(
                self.best_dir,
                max_to_keep=1,
                best_fn=lambda metrics: metrics[self.metric],
                best_mode="max",
                keep_checkpoints_without_metrics=False,
            )
        except CheckpointError:
            raise
        except Exception as err:  # orbax reads every step's metrics; one may be unreadable
            self._best_error = err

    @property
    def best(self) -> ocp.CheckpointManager:
        if self._best is None:
            raise CheckpointError(
                f"best checkpoint in {self.best_dir} is corrupt "
                f"({short_reason(self._best_error)}): {_REPAIR_BEST}"
            ) from self._best_error
        return self._best

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def best_step(self) -> int | None:
        return self.best.best_step()

    # -- writing

    def check_writable(self) -> None:
        """Raises ``CheckpointError`` unless an entry can be created in ``checkpoints/`` and
        ``best/`` (called at the start of training, so that it does not fail after an epoch)."""
        for directory in (self.latest_dir, self.best_dir):
            try:
                os.makedirs(directory, exist_ok=True)
                os.rmdir(tempfile.mkdtemp(prefix=".write-probe-", dir=directory))
            except OSError as err:
                raise CheckpointError(
                    f"checkpoint directory {directory} is not writable ({short_reason(err)}); "
                    f"{_write_advice(err)}"
                ) from err

    def save(self, step: int, state: Any, metrics: dict[str, float] | None = None) -> None:
        """Saves ``state`` (a host pytree) as the latest; with ``metrics``, as a best candidate."""
        if self.latest.latest_step() != step:
            self._save(self.latest, step, state)
        if metrics is not None and self.best.latest_step() != step:
            self._save(self.best, step, state, metrics)

    @staticmethod
    def _save(manager, step: int, state: Any, metrics: dict | None = None) -> None:
        try:
            manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)
        except Exception as err:
            raise CheckpointError(
                f"could not write checkpoint {os.path.join(str(manager.directory), str(step))} "
                f"({short_reason(err)}); {_write_advice(err, str(manager.directory))}"
            ) from err

    # -- reading

    def restore(self, target: Any, which: str = "latest", step: int | None = None) -> Any:
        """Restores into the structure of ``target`` (see ``load``)."""
        return self.load(target, which, step)[1]

    def load(
        self, target: Any, which: str = "latest", step: int | None = None, repair: bool = False
    ) -> tuple[int, Any]:
        """``(step, state)`` of checkpoint ``which`` (``latest`` or ``best``) at ``step``.

        Without a step, ``latest`` is the newest intact checkpoint: corrupt newer ones are skipped
        with a warning, and with ``repair`` moved to ``workdir/corrupt/`` first. ``best`` is the
        best step, and an error when corrupt. Raises ``CheckpointError`` saying which and why.
        """
        if which == "best":
            manager = self.best
            step = manager.best_step() if step is None else step
        elif which == "latest":
            manager = self.latest
        else:
            raise ValueError(f"unknown checkpoint {which!r}; valid: latest, best")
        if step is None and which == "latest":
            return self._load_newest(target, repair)
        if step is None:
            raise CheckpointError(f"no {which} checkpoint in {manager.directory}")
        try:
            return step, self._restore_exact(manager, target, step)
        except CorruptCheckpointError as err:
            advice = _REPAIR_BEST if which == "best" else "pass another --checkpoint"
            raise CheckpointError(
                f"checkpoint {err.path} is corrupt ({err.reason}): {advice}"
            ) from err

    def _load_newest(self, target: Any, repair: bool) -> tuple[int, Any]:
        steps = sorted(self.latest.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(
                f"no checkpoint in {self.latest_dir}: train this workdir first "
                "(python -m launch.train --workdir=...)"
            )
        corrupt: list[CorruptCheckpointError] = []
        for step in steps:
            try:
                state = self._restore_exact(self.latest, target, step)
            except CorruptCheckpointError as err:
                corrupt.append(err)
                continue
            for err in corrupt:
                if repair:
                    where = self._move_aside(self.latest, err.path, "checkpoints")
                    logging.warning(
                        "checkpoint %s is corrupt (%s); moved to %s; resuming from step %d",
                        err.path, err.reason, where, step,
                    )  # fmt: skip
                else:
                    logging.warning(
                        "checkpoint %s is corrupt (%s); using step %d", err.path, err.reason, step
                    )
            return step, state
        first = corrupt[0]
        older = ", ".join(str(s) for s in steps[1:])
        raise CheckpointError(
            f"checkpoint {first.path} is corrupt ({first.reason})"
            + (f" and so are the older steps ({older})" if older else "")
            + f": no intact checkpoint to resume from; use a fresh --workdir, or move "
            f"{self.latest_dir} aside to start over"
        )

    def _restore_exact(self, manager, target: Any, step: int) -> Any:
        """Restores ``step``; raises ``CheckpointMismatchError`` when the stored tree differs from
        ``target``'s and ``CorruptCheckpointError`` when it cannot be read."""
        path = os.path.join(str(manager.directory), str(step))
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            return manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except MemoryError:
            raise  # not the checkpoint's fault: do not move it aside
        except Exception as err:  # orbax raises many types: tell a mismatch from corruption
            reason = short_reason(err)
            try:
                stored = manager.item_metadata(step)
            except Exception:
                stored = None  # unreadable metadata: corrupt
            if stored is not None and _shapes(stored) != _shapes(abstract):
                raise CheckpointMismatchError(
                    f"checkpoint {path} was written for a different model/optimiser config; use "
                    "a fresh --workdir"
                ) from err
            raise CorruptCheckpointError(
                f"checkpoint {path} is corrupt ({reason})", path, reason
            ) from err

    # -- repairs (training only)

    def _move_aside(self, manager, path: str, kind: str) -> str:
        """Moves a corrupt step directory to ``workdir/corrupt/<kind>_<step>`` (outside the
        managers' directories), then reloads ``manager`` (None: none to reload)."""
        name = f"{kind}_{os.path.basename(path)}"
        target = os.path.join(self.workdir, "corrupt", name)
        for n in range(2, 1000):
            if not os.path.exists(target):
                break
            target = os.path.join(self.workdir, "corrupt", f"{name}.{n}")
        if jax.process_index() == 0:
            try:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.rename(path, target)
            except OSError as err:
                raise CheckpointError(
                    f"checkpoint {path} is corrupt and could not be moved aside "
                    f"({short_reason(err)}); move or delete it yourself"
                ) from err
        ocp.multihost.sync_global_processes(f"advjax_move_aside_{name}")
        if manager is not None:
            manager.reload()
        return target

    def check_best(
        self, target: Any, logged_metrics: Callable[[int], dict | None] | None = None
    ) -> None:
        """Verifies that the best checkpoint restores into ``target``'s structure. A corrupt one
        is moved aside and rewritten from the intact latest checkpoint of its step, with its
        metrics (from the checkpoint, else ``logged_metrics(step)``); without those it stays
        moved aside, and ``--checkpoint=best`` uses the latest until the next validation."""
        if self._best is None:
            corrupt = self._unreadable_best_steps()
        else:
            step = self._best.best_step()
            if step is None:
                return
            try:
                self._restore_exact(self._best, target, step)
                return
            except CorruptCheckpointError as err:
                corrupt = [(step, err.reason)]
        for step, reason in corrupt:
            self._replace_best(target, step, reason, logged_metrics)

    def _unreadable_best_steps(self) -> list[tuple[int, str]]:
        found = []
        for name in sorted(os.listdir(self.best_dir)) if os.path.isdir(self.best_dir) else []:
            path = os.path.join(self.best_dir, name, "metrics", "metrics")
            if not name.isdigit() or not os.path.exists(path):
                continue
            try:
                with open(path) as f:
                    json.load(f)
            except Exception as err:
                found.append((int(name), short_reason(err)))
        if not found:  # the manager failed for another reason
            raise self._best_error_as_checkpoint_error()
        return found

    def _best_error_as_checkpoint_error(self) -> CheckpointError:
        return CheckpointError(
            f"cannot read the best checkpoints in {self.best_dir} "
            f"({short_reason(self._best_error)}); move it aside or use a fresh --workdir"
        )

    def _replace_best(self, target, step: int, reason: str, logged_metrics) -> None:
        path = os.path.join(self.best_dir, str(step))
        metrics = None
        if self._best is not None:
            try:
                metrics = self._best.metrics(step)
            except Exception:
                metrics = None
        if not metrics and logged_metrics is not None:
            metrics = logged_metrics(step)
        source = None
        if metrics and self.metric in metrics and step in self.latest.all_steps():
            try:
                source = self._restore_exact(self.latest, target, step)
            except CheckpointError:
                source = None
        where = self._move_aside(self._best, path, "best")
        if self._best is None:
            self._open_best()
            if self._best is None:
                raise self._best_error_as_checkpoint_error()
        if source is None:
            logging.warning(
                "best checkpoint %s is corrupt (%s); moved to %s; --checkpoint=best uses the "
                "latest checkpoint until the next validation",
                path, reason, where,
            )  # fmt: skip
            return
        self._save(self._best, step, source, dict(metrics))
        logging.warning(
            "best checkpoint %s was corrupt (%s); moved to %s and rewritten from %s",
            path, reason, where, os.path.join(self.latest_dir, str(step)),
        )  # fmt: skip

    def wait(self) -> None:
        self.latest.wait_until_finished()
        if self._best is not None:
            self._best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        if self._best is not None:
            self._best.close()


_REPAIR_BEST = (
    "rerun `python -m launch.train` on this workdir to repair it, or pass --checkpoint=latest"
)


def _shapes(tree: Any) -> dict[tuple[str, ...], tuple[int, ...] | None]:
    """``{path: shape}`` of a tree's leaves, paths as strings (stored trees are plain dicts and
    lists, targets dataclasses and named tuples; typed PRNG keys have no comparable shape)."""

    def name(key) -> str:
        for attr in ("name", "key", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = getattr(leaf, "dtype", None)
        typed_key = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.extended)
        shape = getattr(leaf, "shape", None)
        out[tuple(name(k) for k in path)] = None if typed_key or shape is None else tuple(shape)
    return out


def _quiet_tensorstore_callbacks() -> None:
    """Drops the "Event loop is closed" tracebacks that TensorStore callbacks print (as
    unraisable exceptions) when orbax gives up on a read that failed: dozens of lines that would
    bury the one error that says what happened. Other unraisable exceptions pass through."""
    previous = sys.unraisablehook
    if getattr(previous, "_advjax_quiet", False):
        return

    def hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        previous(unraisable)

    hook._advjax_quiet = True
    sys.unraisablehook = hook
