"""The evaluation suite: several attacks over a dataset, per-example worst case, resumable.

    result = evaluate_suite(model_fn, variables, test_set, ["clean", "pgd20", "aa_standard"],
                            settings=ThreatSettings(norm="linf", eps=0.3), key=key)
    result.accuracy()            # {"clean": 0.99, "pgd20": 0.93, ..., "worst_case": 0.90}
    result.correct["pgd20"]      # bool [N]: correct under PGD-20 (and clean)

Each attack runs on every test point (so its own column is its accuracy) in fixed-shape global
batches split over all devices (``jit(shard_map)``, the modern ``pmap``); per-example keys are
``fold_in(fold_in(key, crc32(name)), example_index)``, so numbers do not depend on the batch size,
the number of devices or the order of the attacks. A point is robust under an attack when the
model classifies the returned ``x_adv`` correctly and the clean point too; ``x_adv`` outside the
threat model's ball or the [0, 1] box is counted as a failed attack and reported
(``violations``). Each attack's perturbations ``x_adv - x`` are summarised in the same pass
(``perturbation``: Table 5's mean ``|delta|``, mean Linf and fractions of pixels within 0.9, 1 and
1.1 eps; ``advjax.eval.perturbation``). With ``state_path`` the per-example results are saved
after every batch, and a rerun skips the finished batches.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import numbers
import os
import zipfile
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from advjax import validation
from advjax.data import Dataset, eval_batches, num_eval_batches
from advjax.eval import perturbation as perturbation_stats
from advjax.eval.presets import Entry, ThreatSettings, resolve
from advjax.sharding import AXIS, make_mesh, replicate, shard_batch

# Slack of the threat-model check: float32 projections may overshoot eps by rounding.
BOUND_TOLERANCE = 1e-5


@dataclasses.dataclass
class SuiteResult:
    """Per-example outcomes: ``correct[name]`` is bool ``[N]`` (clean-correct and robust)."""

    entries: list[Entry]
    correct: dict[str, np.ndarray]
    violations: dict[str, int]
    evaluated: np.ndarray  # bool [N]: False for points of batches not evaluated yet
    # Per attack (not clean): per-example perturbation statistics, perturbation.KEYS -> [N]
    # (NaN where unknown), and the eps the fractions refer to.
    perturbation: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    perturbation_eps: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def num_examples(self) -> int:
        return int(self.evaluated.sum())

    @property
    def complete(self) -> bool:
        return bool(self.evaluated.all())

    @property
    def worst_case(self) -> np.ndarray:
        """Correct under every attack of the suite (the per-point worst case)."""
        return np.logical_and.reduce([self.correct[e.name] for e in self.entries])

    def accuracy(self) -> dict[str, float]:
        """Accuracy per attack and for the worst case, over the evaluated points."""
        count = max(self.num_examples, 1)
        out = {
            e.name: float(self.correct[e.name][self.evaluated].sum() / count) for e in self.entries
        }
        out["worst_case"] = float(self.worst_case[self.evaluated].sum() / count)
        return out

    def perturbation_statistics(self) -> dict[str, dict[str, float]]:
        """Per attack: Table 5's statistics of ``x_adv - x`` over the evaluated points
        (``advjax.eval.perturbation.summarize``) and the ``eps`` of the fractions."""
        return {
            name: {
                **perturbation_stats.summarize(per_example, self.evaluated),
                "eps": self.perturbation_eps.get(name),
            }
            for name, per_example in self.perturbation.items()
        }


def _norms(delta: jax.Array) -> dict[str, jax.Array]:
    flat = delta.reshape(delta.shape[0], -1)
    return {
        "linf": jnp.max(jnp.abs(flat), axis=1),
        "l2": jnp.sqrt(jnp.sum(flat * flat, axis=1)),
        "l1": jnp.sum(jnp.abs(flat), axis=1),
    }


@validation.value_checks(False)  # the Dataset checked its images and labels
def _entry_outcome(
    variables: Any,
    batch: dict[str, jax.Array],
    key: jax.Array,
    offset: jax.Array,
    attack_variables: Any,
    *,
    model_fn,
    attack,
    norm: str | None,
    eps: float | None,
    stats_eps: float,
):
    """Per-example (correct, in_bounds, perturbation statistics of ``x_adv - x`` with the
    fractions relative to ``stats_eps``) on this device's shard, gathered over the mesh."""
    x, y = batch["image"], batch["label"]
    per_device = y.shape[0]
    index = offset + jax.lax.axis_index(AXIS) * per_device + jnp.arange(per_device)
    clean = jnp.argmax(model_fn(variables, x), -1) == y
    if attack is None:
        correct, in_bounds = clean, jnp.ones_like(clean)
        x_adv = x
    else:
        keys = jax.vmap(jax.random.fold_in, (None, 0))(key, index)
        # A transfer attack takes (target, surrogate) variables (Entry.attack_variables).
        pair = variables if attack_variables is None else (variables, attack_variables)
        x_adv = attack(model_fn, pair, x, y, keys)
        axes = tuple(range(1, x.ndim))
        in_bounds = (jnp.min(x_adv, axis=axes) >= 0.0) & (jnp.max(x_adv, axis=axes) <= 1.0)
        if norm is not None:
            size = _norms(x_adv - x)[norm]
            in_bounds &= size <= eps * (1 + BOUND_TOLERANCE) + BOUND_TOLERANCE
        # An out-of-bounds x_adv is not a valid attack: the point keeps its clean outcome.
        fooled = (jnp.argmax(model_fn(variables, x_adv), -1) != y) & in_bounds
        correct = clean & ~fooled
    stats = perturbation_stats.per_example_statistics(x_adv, x, stats_eps)
    gather = functools.partial(jax.lax.all_gather, axis_name=AXIS, tiled=True)
    return gather(correct), gather(in_bounds), jax.tree.map(gather, stats)


@functools.cache
def _sharded_outcome(model_fn, attack, norm, eps, mesh: Mesh, stats_eps: float = 0.0):
    fn = functools.partial(
        _entry_outcome, model_fn=model_fn, attack=attack, norm=norm, eps=eps, stats_eps=stats_eps
    )
    mapped = jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(P(), P(AXIS), P(), P(), P()),
        out_specs=(P(), P(), P()),
        check_vma=False,
    )
    return jax.jit(mapped)


def _entry_key(key: jax.Array, name: str) -> jax.Array:
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


class _State:
    """Per-example results saved after every batch (``.npz``, written atomically)."""

    def __init__(self, path: str | None, fingerprint: dict, names: list[str], n: int, batches: int):
        self.path, self.fingerprint = path, json.dumps(fingerprint, sort_keys=True, default=str)
        self.correct = {name: np.zeros(n, bool) for name in names}
        self.in_bounds = {name: np.ones(n, bool) for name in names}
        # NaN: not measured (also the points of a state file written before these statistics).
        self.perturbation = {
            name: {k: np.full(n, np.nan, np.float32) for k in perturbation_stats.KEYS}
            for name in names
        }
        self.done = np.zeros(batches, bool)
        if path and os.path.exists(path):
            self._load()

    def _load(self) -> None:
        try:
            with np.load(self.path, allow_pickle=False) as f:
                saved = str(f["fingerprint"])
                if saved != self.fingerprint:
                    raise ValueError(
                        f"evaluation state {self.path} was written by a different evaluation "
                        f"(attacks, threat model, data or seed differ); delete it to start over.\n"
                        f"saved: {saved}\nnow:   {self.fingerprint}"
                    )
                self.done = f["done"].copy()
                for name in self.correct:
                    self.correct[name] = f[f"correct/{name}"].copy()
                    self.in_bounds[name] = f[f"in_bounds/{name}"].copy()
                    for k in perturbation_stats.KEYS:
                        if f"perturbation/{name}/{k}" in f.files:
                            self.perturbation[name][k] = f[f"perturbation/{name}/{k}"].copy()
        except (OSError, KeyError, zipfile.BadZipFile) as e:
            raise ValueError(f"evaluation state {self.path} is unreadable ({e}); delete it") from e

    def save(self) -> None:
        if not self.path or jax.process_index() != 0:
            return
        arrays = {"fingerprint": np.asarray(self.fingerprint), "done": self.done}
        for name in self.correct:
            arrays[f"correct/{name}"] = self.correct[name]
            arrays[f"in_bounds/{name}"] = self.in_bounds[name]
            for k, values in self.perturbation[name].items():
                arrays[f"perturbation/{name}/{k}"] = values
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = f"{self.path}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, self.path)


def _check_inputs(model_fn, variables, dataset: Dataset, batch_size: int) -> None:
    """Once, on concrete arrays: the steps run without traced value checks
    (``advjax.validation``). The ``Dataset`` has checked its images and labels."""
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset.name!r} is empty: there is nothing to evaluate")
    first = jnp.asarray(dataset.images[:1], jnp.float32) / 255.0
    validation.check_batch(first, jnp.asarray(dataset.labels[:1]))
    outputs = validation.num_classes_of(model_fn, variables, first)
    if outputs is not None and outputs < dataset.num_classes:
        raise ValueError(
            f"the model has {outputs} outputs but dataset {dataset.name!r} has "
            f"{dataset.num_classes} classes"
        )


def evaluate_suite(
    model_fn,
    variables: Any,
    dataset: Dataset,
    attacks: list[str | dict | Entry],
    *,
    settings: ThreatSettings | None = None,
    batch_size: int = 500,
    key: jax.Array | None = None,
    mesh: Mesh | None = None,
    state_path: str | None = None,
    progress: bool = True,
    stop_after_batches: int | None = None,
) -> SuiteResult:
    """Runs every attack of ``attacks`` on every example of ``dataset``.

    Args:
      model_fn: hashable ``model_fn(variables, x) -> logits`` (``models.make_model_fn``).
      attacks: preset names (``advjax.eval.presets.PRESETS``, ``pgd<N>``), attack dicts, or
        ``Entry`` objects (e.g. ``presets.transfer_entry``: an entry's ``attack_variables``, the
        surrogate's, go to its attack as ``(variables, attack_variables)``). ``"clean"`` is
        added first if missing.
      settings: the threat model (norm, exact eps) and defaults shared by the presets.
      state_path: ``.npz`` file to save progress to and resume from.
      stop_after_batches: stop after this many newly evaluated batches (to test resumption).
    """
    settings = settings or ThreatSettings()
    _check_inputs(model_fn, variables, dataset, batch_size)
    key = jax.random.key(0) if key is None else key
    mesh = make_mesh() if mesh is None else mesh
    entries = [a if isinstance(a, Entry) else resolve(a, settings) for a in attacks]
    if all(e.name != "clean" for e in entries):
        entries.insert(0, resolve("clean", settings))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate attack names in the suite: {names}")

    n = len(dataset)
    total = num_eval_batches(n, batch_size)
    fingerprint = {
        "entries": [(e.name, e.protocol) for e in entries],
        "dataset": dataset.name,
        "num_examples": n,
        "batch_size": batch_size,
        "key": np.asarray(jax.random.key_data(key)).tolist(),
    }
    state = _State(state_path, fingerprint, names, n, total)
    variables = replicate(variables, mesh)
    attack_variables = {e.name: replicate(e.attack_variables, mesh) for e in entries}
    steps = {
        e.name: _sharded_outcome(
            model_fn,
            e.attack,
            e.protocol.get("norm") if e.bounded and e.attack is not None else None,
            e.protocol.get("eps") if e.bounded and e.attack is not None else None,
            mesh,
            _stats_eps(e, settings),
        )
        for e in entries
    }
    show = progress and jax.process_index() == 0
    evaluated = 0
    bar = tqdm(total=total * len(entries), desc="evaluate", disable=not show, leave=False)
    bar.update(int(state.done.sum()) * len(entries))
    for b, batch in enumerate(eval_batches(dataset, batch_size)):
        if state.done[b]:
            continue
        if stop_after_batches is not None and evaluated >= stop_after_batches:
            break
        sharded = shard_batch(batch, mesh)
        lo, hi = b * batch_size, min((b + 1) * batch_size, n)
        for e in entries:
            bar.set_postfix_str(e.label)
            correct, in_bounds, stats = jax.device_get(
                steps[e.name](
                    variables,
                    sharded,
                    _entry_key(key, e.name),
                    jnp.int32(lo),
                    attack_variables[e.name],
                )
            )
            state.correct[e.name][lo:hi] = np.asarray(correct)[: hi - lo]
            state.in_bounds[e.name][lo:hi] = np.asarray(in_bounds)[: hi - lo]
            for k, values in stats.items():
                state.perturbation[e.name][k][lo:hi] = np.asarray(values)[: hi - lo]
            bar.update(1)
        state.done[b] = True
        state.save()
        evaluated += 1
    bar.close()
    return SuiteResult(
        entries=entries,
        correct=state.correct,
        violations={name: int((~state.in_bounds[name]).sum()) for name in names},
        evaluated=np.repeat(state.done, batch_size)[:n],
        perturbation={e.name: state.perturbation[e.name] for e in entries if e.attack is not None},
        perturbation_eps={e.name: _stats_eps(e, settings) for e in entries if e.attack is not None},
    )


def _stats_eps(entry: Entry, settings: ThreatSettings) -> float:
    """The eps of an entry's perturbation fractions: its own (its lp bound, or its attack's
    ``eps`` for unbounded attacks such as UDR's soft ball), else the suite's."""
    eps = entry.protocol.get("eps")
    ok = isinstance(eps, numbers.Real) and not isinstance(eps, bool)
    return float(eps) if ok else float(settings.eps)
