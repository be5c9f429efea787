"""Auto-PGD (Croce & Hein, ICML 2020, Algorithm 1) and its multi-targeted version APGD-T.

A port of the reference implementation (fra31/auto-attack, ``autoattack/autopgd_base.py``) to
fixed-shape, per-example JAX: one ``lax.scan`` over iterations, every example with its own step
size, counters, best point and best adversarial example, checkpoints given by a static boolean
array. Per iteration ``k`` (``P`` is the projection onto ``B_p(x, eps) ∩ [0, 1]^D``)::

    z       = P(x_k + eta_k * direction(grad f(x_k)))            (sign / g / ||g||_2)
    x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))      a = 1 at k = 0, then 0.75

At the checkpoints (``checkpoint_schedule``: 22, 41, 57, 70, 80, 87, 93, 99 of 100 iterations,
``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` with the reference's integer rounding) the step
size of an example is halved, and the example restarts from its best point ``x_max`` (and the
gradient there), when

1. it increased its loss in at most ``rho`` of the iterations since the last checkpoint, or
2. its step size was not reduced at the last checkpoint and its best loss has not improved since.

L1 (the reference's L1-APGD, Croce & Hein, ICCV 2021 "Mind the box"): step ``eta = eps``, no
momentum, the direction moves the top ``topk`` fraction of the coordinates by ``|grad|``
(``topk = 0.2`` at first), checked every ``max(int(0.04 steps), 1)`` iterations: the new
``topk`` is ``||x_max - x||_0 / D / 1.5``; if the sparsity of ``x_max`` fell below 0.95 of its
value at the last check the step resets to ``eps`` and the run restarts from ``x_max``, else the
step is divided by 1.5 (within ``[eps / 10, eps]``). ``use_largereps`` runs 30% / 30% / 40% of the
iterations at ``3 eps``, ``2 eps``, ``eps``, each stage starting from the last one's ``x_max``.

Losses: cross-entropy and DLR (eq. 5) for APGD; for APGD-T the targeted DLR (eq. 6) towards the
``k``-th most likely class at the clean point, ``k = 2 .. num_targets + 1``, one run of
``steps`` iterations per target (the reference's default for every norm, L1 included; the
reference's unused ``ce-targeted`` loss is available as ``loss="ce"``).

Result (``AttackResult``): ``success`` is untargeted (some iterate, or the clean point, is
misclassified, as in the reference's APGD-T too); ``x_adv`` is the last misclassified iterate when
successful (the reference's ``x_best_adv``), else the maximum-loss point ``x_max``; a point already
misclassified at ``x`` is returned unchanged (the reference attacks only correctly classified
points); ``loss`` is the objective at ``x_adv``. Restarts and targets are combined per example,
success first, then higher objective.

Reference details kept on purpose (so trajectories match the reference step for step):

* the oscillation count at the first checkpoint compares the first iterate's loss with 0 (the
  reference reads ``loss_steps[-1]``, not yet written), and uses ``<= rho * window``;
* after a restart from ``x_max`` the momentum term is ``x_max - x_{k-1}``;
* with EoT the gradient is averaged over ``eot_samples`` draws, the loss and prediction are the
  last draw's;
* the L2 projection is the reference's: onto the L2 ball, then clipped to the box (feasible, not
  the exact projection onto the intersection); Linf uses ``LpBall.project`` (the same clip); L1
  uses the exact projection onto the L1 ball ∩ box (``project_l1_box``; the reference's is exact
  too), added to the point as a correction in the reference's float order, because the L1 rule
  counts nonzero coordinates of ``x_max - x`` including rounding residues.

L1 trajectories match the reference until a one-ulp difference between the two exact projections
flips such a residue (a few examples in tens of iterations); Linf and L2 ones until ties or
vanishing gradients (e.g. DLR saturating at 1) make the sign of float noise matter.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from advjax import losses
from advjax.attacks import compaction
from advjax.attacks.base import (
    Attack,
    AttackResult,
    ModelFn,
    check_nonnegative,
    is_label_vector,
    split_keys,
    validated,
    with_model_key,
)
from advjax.attacks.combinators import keep_better, reduce_worst
from advjax.threats import LpBall
from advjax.threats.lp import check_norm, project_l1_box

MOMENTUM = 0.75
STEP_FACTOR = {"linf": 2.0, "l2": 2.0, "l1": 1.0}  # initial step = factor * eps
UNTARGETED_LOSSES = ("ce", "dlr")
TARGETED_LOSSES = ("dlr", "ce")  # targeted DLR (eq. 6) / minus the CE towards the target
L1_SPARSITY_INIT = 0.2
L1_STEP_DECAY = 1.5
L1_MIN_STEP_RATIO = 10.0
L1_SPARSITY_RATIO = 0.95
LARGEREPS_EPS = (3.0, 2.0, 1.0)


class APGDTrace(NamedTuple):
    """One APGD run (``APGD.trace``): final state and per-iteration history.

    Fields: ``x_best`` / ``loss_best`` (maximum-loss point ``x_max`` and its loss), ``x_best_adv`` /
    ``loss_adv`` (last misclassified iterate, the start point if none, and its loss), ``fooled``
    (some iterate misclassified), ``losses`` ``[steps, B]`` (loss of each iterate),
    ``step_sizes`` ``[steps, B]`` (step size used by each iteration), ``restarts`` ``[steps, B]``
    (the check after that iteration reduced the step / restarted from ``x_max``).
    """

    x_best: jax.Array
    loss_best: jax.Array
    x_best_adv: jax.Array
    loss_adv: jax.Array
    fooled: jax.Array
    losses: jax.Array
    step_sizes: jax.Array
    restarts: jax.Array


def checkpoint_schedule(steps: int, norm: str = "linf") -> tuple[int, ...]:
    """Iteration counts after which APGD checks its step size (the reference's counters).

    Linf/L2: windows of ``max(int(0.22 n), 1)`` iterations, shrinking by ``max(int(0.03 n), 1)``
    down to ``max(int(0.06 n), 1)``: ``(22, 41, 57, 70, 80, 87, 93, 99)`` for ``n = 100``.
    L1: every ``max(int(0.04 n), 1)`` iterations.
    """
    check_norm(norm)
    if norm == "l1":
        window = max(int(0.04 * steps), 1)
        return tuple(range(window, steps + 1, window))
    window = max(int(0.22 * steps), 1)
    window_min = max(int(0.06 * steps), 1)
    decrease = max(int(0.03 * steps), 1)
    points, done = [], 0
    while done + window <= steps:
        done += window
        points.append(done)
        window = max(window - decrease, window_min)
    return tuple(points)


def _schedule_arrays(steps: int, norm: str, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """Static per-iteration arrays: is there a check after iteration i, and its threshold.

    The threshold is ``rho * window`` rounded to float32 as in the reference's comparison.
    """
    is_check = np.zeros(steps, bool)
    threshold = np.zeros(steps, np.float32)
    last = 0
    for point in checkpoint_schedule(steps, norm):
        is_check[point - 1] = True
        threshold[point - 1] = np.float32((point - last) * rho)
        last = point
    return is_check, threshold


def apgd_targets(logits: jax.Array, num_targets: int) -> jax.Array:
    """APGD-T targets ``[B, n]``: column ``j`` is the ``(j + 2)``-th most likely class.

    For a correctly classified point these are its ``n`` most likely wrong classes.
    """
    return jax.lax.top_k(logits, num_targets + 1)[1][:, 1:]


def halving_condition(
    increases: jax.Array,
    threshold: jax.Array,
    reduced_last: jax.Array,
    best_at_last_check: jax.Array,
    best: jax.Array,
) -> jax.Array:
    """The APGD check (Algorithm 1, conditions 1 and 2), per example.

    ``increases``: iterations since the last check whose loss exceeded the previous iterate's;
    ``threshold``: ``rho * window``. Condition 1: ``increases <= threshold``; condition 2: no
    reduction at the last check and no improvement of the best loss since.
    """
    return (increases <= threshold) | (~reduced_last & (best_at_last_check >= best))


def _bcast(v: jax.Array, like: jax.Array) -> jax.Array:
    return v.reshape((-1,) + (1,) * (like.ndim - 1))


def _flat(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def _l2(v: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(_flat(v) ** 2, axis=1))


def _l0(v: jax.Array) -> jax.Array:
    return jnp.sum(_flat(v) != 0, axis=1).astype(jnp.float32)


def _project_l2_reference(x_adv: jax.Array, x: jax.Array, eps: Any) -> jax.Array:
    """The reference's L2 projection: rescale onto the L2 ball, then clip to [0, 1]."""
    delta = x_adv - x
    norm = _bcast(_l2(delta), x)
    return jnp.clip(x + delta / (norm + 1e-12) * jnp.minimum(eps, norm), 0.0, 1.0)


def _l1_correction(u: jax.Array, x: jax.Array, eps: Any) -> jax.Array:
    """``P(u) - u`` for ``P`` the exact projection onto ``{||d||_1 <= eps, 0 <= x + d <= 1}``.

    The reference adds this correction to the point instead of taking ``x + P(u)``; the float
    rounding then matches its, which matters to the L0 counts of the L1 step-size rule.
    """
    xf, uf = _flat(x), _flat(u)
    return (project_l1_box(uf, -xf, 1.0 - xf, eps) - uf).reshape(x.shape)


def _project_l1_reference(x_adv: jax.Array, x: jax.Array, eps: Any) -> jax.Array:
    """Projection onto the L1 ball ∩ box as the reference sums it: ``(x + u) + (P(u) - u)``."""
    u = x_adv - x
    return (x + u) + _l1_correction(u, x, eps)


def _per_example(fn, key: jax.Array, x: jax.Array) -> jax.Array:
    """``fn(key, x)`` with one key for the batch, or vmapped over per-example keys."""
    if key.ndim == 1:
        return jax.vmap(lambda k, xi: fn(k, xi[None])[0])(key, x)
    return fn(key, x)


def _random_start(key: jax.Array, x: jax.Array, eps: Any, norm: str) -> jax.Array:
    """The reference's random start: Linf ``x + eps t / ||t||_inf`` with ``t ~ U[-1, 1]``, L2
    ``x + eps t / ||t||_2`` with ``t ~ N(0, I)``, L1 ``P(x + t)``, ``t ~ N(0, I)``; in [0, 1]."""

    def draw(k, xb):
        if norm == "linf":
            t = jax.random.uniform(k, xb.shape, minval=-1.0, maxval=1.0)
            scale = jnp.max(jnp.abs(_flat(t)), axis=1)
            return xb + eps * t / (_bcast(scale, xb) + 1e-12)
        t = jax.random.normal(k, xb.shape)
        if norm == "l2":
            return xb + eps * t / (_bcast(_l2(t), xb) + 1e-12)
        return (xb + t) + _l1_correction(t, xb, eps)

    return jnp.clip(_per_example(draw, key, x), 0.0, 1.0)


def _largereps_start(key: jax.Array, x: jax.Array, eps: Any) -> jax.Array:
    """The reference's ``decr_eps_pgd`` start: ``x + N(0, I)`` projected onto the ``3 eps`` L1
    ball ∩ box (each stage then projects its start onto its own ball)."""
    noisy = x + _per_example(lambda k, xb: jax.random.normal(k, xb.shape), key, x)
    return noisy + _l1_correction(noisy - x, x, LARGEREPS_EPS[0] * eps)


def _largereps_iters(steps: int) -> tuple[int, int, int]:
    first = math.ceil(0.3 * steps)
    second = math.ceil(0.3 * steps)
    return first, second, steps - first - second


def _model_keys(key: jax.Array, num: int, eot_samples: int) -> jax.Array:
    """Keys of the randomised model: ``[num, eot_samples]`` or ``[num, eot_samples, B]``."""
    keys = split_keys(key, num * eot_samples)
    return keys.reshape((num, eot_samples) + keys.shape[1:])


class _Evaluator(NamedTuple):
    """Model + objective, with EoT: ``grad(x_adv, keys) -> (grad, loss, logits)``."""

    model_fn: ModelFn
    variables: Any
    loss_fn: Any
    target: Any
    eot_samples: int

    def forward(self, x_adv: jax.Array, model_key: jax.Array | None) -> jax.Array:
        if model_key is None:
            return self.model_fn(self.variables, x_adv)
        if model_key.ndim == 0:
            return self.model_fn(with_model_key(self.variables, model_key), x_adv)
        # Per-example keys: each example gets its own draw of the model's randomness.
        return jax.vmap(
            lambda xi, ki: self.model_fn(with_model_key(self.variables, ki), xi[None])[0]
        )(x_adv, model_key)

    def _one(self, x_adv, model_key):
        def total(v):
            logits = self.forward(v, model_key)
            per_example = self.loss_fn(logits, self.target)
            return jnp.sum(per_example), (per_example, logits)

        grad, (loss, logits) = jax.grad(total, has_aux=True)(x_adv)
        return grad, loss, logits

    def grad(self, x_adv: jax.Array, model_keys: jax.Array | None):
        if model_keys is None:
            return self._one(x_adv, None)

        def draw(grad_sum, k):
            grad, loss, logits = self._one(x_adv, k)
            return grad_sum + grad, (loss, logits)

        grad_sum, (loss, logits) = jax.lax.scan(draw, jnp.zeros_like(x_adv), model_keys)
        return grad_sum / self.eot_samples, loss[-1], logits[-1]


class _State(NamedTuple):
    x_adv: jax.Array
    x_old: jax.Array
    grad: jax.Array
    step: jax.Array
    x_best: jax.Array
    grad_best: jax.Array
    loss_best: jax.Array
    x_best_adv: jax.Array
    loss_adv: jax.Array
    fooled: jax.Array
    prev_loss: jax.Array
    increases: jax.Array
    reduced_last: jax.Array
    best_at_last_check: jax.Array
    topk: jax.Array
    sparsity_old: jax.Array


def _l1_step(grad: jax.Array, topk: jax.Array, step: jax.Array) -> jax.Array:
    """The reference's L1 step: ``step * sign`` on the coordinates with ``|grad|`` at or above the
    ``(1 - topk)`` quantile, divided by their number (in the reference's float order)."""
    flat = _flat(grad)
    n_fts = flat.shape[1]
    index = jnp.clip((1.0 - topk) * n_fts, 0, n_fts - 1).astype(jnp.int32)
    cutoff = jnp.take_along_axis(jnp.sort(jnp.abs(flat), axis=1), index[:, None], axis=1)
    signs = jnp.sign(jnp.where(jnp.abs(flat) >= cutoff, flat, 0.0))
    count = jnp.sum(jnp.abs(signs), axis=1, keepdims=True)
    return (step[:, None] * signs / (count + 1e-10)).reshape(grad.shape)


def _stage(
    evaluator: _Evaluator,
    x: jax.Array,
    y: jax.Array,
    x_start: jax.Array,
    model_keys: jax.Array | None,
    *,
    eps: Any,
    norm: str,
    steps: int,
    rho: float,
    sparsity_from_start: bool,
) -> tuple[_State, tuple[jax.Array, jax.Array, jax.Array]]:
    """``steps`` APGD iterations from ``x_start`` (the reference's ``attack_single_run``)."""
    if norm == "l2":
        project = lambda v: _project_l2_reference(v, x, eps)  # noqa: E731
    elif norm == "l1":
        project = lambda v: _project_l1_reference(v, x, eps)  # noqa: E731
    else:
        project = lambda v: LpBall(norm, eps).project(v, x)  # noqa: E731
    x0 = jnp.clip(x_start, 0.0, 1.0)
    grad0, loss0, logits0 = evaluator.grad(x0, None if model_keys is None else model_keys[0])
    batch = x.shape[0]
    n_fts = math.prod(x.shape[1:])
    max_step = STEP_FACTOR[norm] * eps
    if sparsity_from_start:
        sparsity = _l0(x0 - x)
        topk = sparsity / n_fts / L1_STEP_DECAY
    else:
        sparsity = jnp.full((batch,), float(n_fts), jnp.float32)
        topk = jnp.full((batch,), L1_SPARSITY_INIT, jnp.float32)
    state = _State(
        x_adv=x0,
        x_old=x0,
        grad=grad0,
        step=jnp.full((batch,), 1.0, jnp.float32) * max_step,
        x_best=x0,
        grad_best=grad0,
        loss_best=loss0,
        x_best_adv=x0,
        loss_adv=loss0,
        fooled=jnp.argmax(logits0, axis=-1) != y,
        prev_loss=jnp.zeros_like(loss0),  # the reference's loss_steps[-1], still zero
        increases=jnp.zeros_like(loss0),
        reduced_last=jnp.ones((batch,), bool),
        best_at_last_check=loss0,
        topk=topk,
        sparsity_old=sparsity,
    )
    is_check, threshold = _schedule_arrays(steps, norm, rho)
    momentum = np.full(steps, MOMENTUM, np.float32)
    momentum[:1] = 1.0

    def iteration(s: _State, xs):
        a, check, thresh, keys = xs
        step = _bcast(s.step, x)
        if norm == "l1":
            x_new = project(s.x_adv + _l1_step(s.grad, s.topk, s.step))
        else:
            if norm == "linf":
                direction = jnp.sign(s.grad)
            else:
                direction = s.grad / (_bcast(_l2(s.grad), x) + 1e-12)
            z = project(s.x_adv + step * direction)
            x_new = project(s.x_adv + a * (z - s.x_adv) + (1.0 - a) * (s.x_adv - s.x_old))
        grad, loss, logits = evaluator.grad(x_new, keys)

        wrong = jnp.argmax(logits, axis=-1) != y
        x_best_adv = jnp.where(_bcast(wrong, x), x_new, s.x_best_adv)
        loss_adv = jnp.where(wrong, loss, s.loss_adv)
        improved = loss > s.loss_best
        x_best = jnp.where(_bcast(improved, x), x_new, s.x_best)
        grad_best = jnp.where(_bcast(improved, x), grad, s.grad_best)
        loss_best = jnp.where(improved, loss, s.loss_best)
        increases = s.increases + (loss > s.prev_loss)

        if norm == "l1":
            sparsity = _l0(x_best - x)
            sparser = sparsity / s.sparsity_old < L1_SPARSITY_RATIO
            restart = check & sparser
            new_step = jnp.where(sparser, max_step, s.step / L1_STEP_DECAY)
            new_step = jnp.clip(new_step, max_step / L1_MIN_STEP_RATIO, max_step)
            step_next = jnp.where(check, new_step, s.step)
            topk = jnp.where(check, sparsity / n_fts / L1_STEP_DECAY, s.topk)
            sparsity_old = jnp.where(check, sparsity, s.sparsity_old)
            reduced_last, best_at_last_check = s.reduced_last, s.best_at_last_check
        else:
            reduce = halving_condition(
                increases, thresh, s.reduced_last, s.best_at_last_check, loss_best
            )
            restart = check & reduce
            step_next = jnp.where(restart, s.step / 2.0, s.step)
            reduced_last = jnp.where(check, reduce, s.reduced_last)
            best_at_last_check = jnp.where(check, loss_best, s.best_at_last_check)
            topk, sparsity_old = s.topk, s.sparsity_old
        new = _State(
            x_adv=jnp.where(_bcast(restart, x), x_best, x_new),
            x_old=s.x_adv,
            grad=jnp.where(_bcast(restart, x), grad_best, grad),
            step=step_next,
            x_best=x_best,
            grad_best=grad_best,
            loss_best=loss_best,
            x_best_adv=x_best_adv,
            loss_adv=loss_adv,
            fooled=s.fooled | wrong,
            prev_loss=loss,
            increases=jnp.where(check, 0.0, increases),
            reduced_last=reduced_last,
            best_at_last_check=best_at_last_check,
            topk=topk,
            sparsity_old=sparsity_old,
        )
        return new, (loss, s.step, restart)

    keys = None if model_keys is None else model_keys[1:]
    xs = (jnp.asarray(momentum), jnp.asarray(is_check), jnp.asarray(threshold), keys)
    return jax.lax.scan(iteration, state, xs, length=steps)


@dataclasses.dataclass(frozen=True)
class _APGDBase(Attack):
    eps: float
    steps: int
    norm: str
    loss: str
    restarts: int
    rho: float
    eot_samples: int
    use_largereps: bool

    _valid_losses = UNTARGETED_LOSSES

    def __post_init__(self):
        if self.eps is None:
            raise ValueError("eps is required")
        check_nonnegative(eps=self.eps, rho=self.rho)
        check_norm(self.norm)
        if self.loss not in self._valid_losses:
            raise ValueError(
                f"unknown loss {self.loss!r}; valid losses: {', '.join(self._valid_losses)}"
            )
        for name in ("steps", "restarts", "eot_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if not 0 <= self.rho <= 1:
            raise ValueError(f"rho must be in [0, 1], got {self.rho}")
        if self.use_largereps and self.norm != "l1":
            raise ValueError(f"use_largereps is for the L1 norm only, got norm={self.norm!r}")
        if self.use_largereps and self.steps < 3:
            raise ValueError(f"use_largereps needs steps >= 3, got {self.steps}")

    def scaled(self, factor: Any) -> _APGDBase:
        return dataclasses.replace(self, eps=self.eps * factor)

    # -- objective -------------------------------------------------------------------------------

    def _loss_fn(self):
        raise NotImplementedError

    def _min_classes(self) -> int:
        return 3 if self.loss == "dlr" else 2

    def _check_inputs(self, x: jax.Array, y: Any, num_classes: int) -> None:
        """Labels and number of classes (``@validated`` checked the images and label values)."""
        if not is_label_vector(y) or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"{type(self).__name__} takes integer labels [B] for the batch of {x.shape[0]}, "
                f"got {getattr(y, 'shape', type(y).__name__)}"
            )
        if num_classes < self._min_classes():
            raise ValueError(
                f"loss {self.loss!r} of {type(self).__name__} needs at least "
                f"{self._min_classes()} classes, the model has {num_classes}"
            )

    # -- one run ---------------------------------------------------------------------------------

    def _single_run(
        self,
        model_fn: ModelFn,
        variables: Any,
        x: jax.Array,
        y: jax.Array,
        target: Any,
        key: jax.Array,
        x_init: jax.Array | None = None,
    ) -> APGDTrace:
        eot = int(self.eot_samples)
        evaluator = _Evaluator(model_fn, variables, self._loss_fn(), target, eot)
        k_init, k_model = split_keys(key, 2) if self.eot_samples > 1 else (key, None)
        steps = int(self.steps)
        if self.use_largereps:
            epss = tuple(f * self.eps for f in LARGEREPS_EPS)
            stages = tuple(zip(epss, _largereps_iters(steps), strict=True))
            start = _largereps_start(k_init, x, self.eps) if x_init is None else x_init
        else:
            stages = ((self.eps, steps),)
            start = _random_start(k_init, x, self.eps, self.norm) if x_init is None else x_init
        stage_keys = None if k_model is None else split_keys(k_model, len(stages))
        history = []
        for i, (eps, iters) in enumerate(stages):
            model_keys = None
            if stage_keys is not None:
                model_keys = _model_keys(stage_keys[i], iters + 1, int(self.eot_samples))
            if self.use_largereps:
                start = start + _l1_correction(start - x, x, eps)
            state, ys = _stage(
                evaluator,
                x,
                y,
                start,
                model_keys,
                eps=eps,
                norm=self.norm,
                steps=iters,
                rho=self.rho,
                sparsity_from_start=self.use_largereps or x_init is not None,
            )
            history.append(ys)
            start = state.x_best
        losses_, step_sizes, restarted = (
            jnp.concatenate(h, axis=0) for h in zip(*history, strict=True)
        )
        return APGDTrace(
            x_best=state.x_best,
            loss_best=state.loss_best,
            x_best_adv=state.x_best_adv,
            loss_adv=state.loss_adv,
            fooled=state.fooled,
            losses=losses_,
            step_sizes=step_sizes,
            restarts=restarted,
        )

    def _run_result(self, model_fn, variables, x, y, target, key) -> AttackResult:
        t = self._single_run(model_fn, variables, x, y, target, key)
        return AttackResult(
            x_adv=jnp.where(_bcast(t.fooled, x), t.x_best_adv, t.x_best),
            loss=jnp.where(t.fooled, t.loss_adv, t.loss_best),
            success=t.fooled,
        )

    def _restarts(self, model_fn, variables, x, y, target, keys) -> AttackResult:
        """Runs vmapped over the leading axis of ``keys``, reduced per example."""
        if keys.shape[0] == 1:
            return self._run_result(model_fn, variables, x, y, target, keys[0])
        stacked = jax.vmap(lambda k: self._run_result(model_fn, variables, x, y, target, k))(keys)
        return reduce_worst(stacked)

    def _split_clean_key(self, key: jax.Array) -> tuple[jax.Array | None, jax.Array]:
        """A key for the clean forward pass (randomised models only) and one for the runs."""
        if self.eot_samples > 1:
            k_clean, k_runs = split_keys(key, 2)
            return k_clean, k_runs
        return None, key

    def _run_keys(self, key: jax.Array, n_groups: int) -> jax.Array:
        """Keys ``[n_groups, restarts]`` (``+ [B]`` for per-example keys), one per run."""
        n_runs = n_groups * int(self.restarts)
        keys = key[None] if n_runs == 1 else split_keys(key, n_runs)
        return keys.reshape((n_groups, int(self.restarts)) + keys.shape[1:])

    def _clean_logits(self, model_fn, variables, x, key) -> jax.Array:
        evaluator = _Evaluator(model_fn, variables, None, None, int(self.eot_samples))
        return evaluator.forward(x, key)

    def _num_classes(self, model_fn, variables, x, key) -> int:
        k_clean = self._split_clean_key(key)[0]
        shape = jax.eval_shape(lambda: self._clean_logits(model_fn, variables, x, k_clean)).shape
        return shape[-1]

    def _keep_clean_errors(self, result, x, y, clean_logits, clean_loss) -> AttackResult:
        """Points misclassified at ``x`` are returned unchanged (counted as successes)."""
        wrong = jnp.argmax(clean_logits, axis=-1) != y
        return AttackResult(
            x_adv=jax.lax.stop_gradient(jnp.where(_bcast(wrong, x), x, result.x_adv)),
            loss=jnp.where(wrong, clean_loss, result.loss),
            success=wrong | result.success,
        )


@dataclasses.dataclass(frozen=True)
class APGD(_APGDBase):
    """Untargeted APGD (Croce & Hein 2020, Algorithm 1) on cross-entropy or DLR (eq. 5).

    Attributes:
      eps: radius of the Lp ball.
      norm: "linf", "l2" or "l1".
      loss: "ce" or "dlr".
      steps: iterations per run.
      restarts: runs from independent random starts (vmapped), per-example worst case.
      rho: threshold of the oscillation check (condition 1).
      eot_samples: gradient draws per iteration for randomised models (expectation over
        transformation); with ``eot_samples > 1`` each draw calls the model with a fresh key via
        ``with_model_key`` (per-example keys give per-example draws).
      use_largereps: L1 only, the reference's ``3 eps -> 2 eps -> eps`` schedule.
    """

    def _loss_fn(self):
        return losses.get_loss(self.loss)

    @validated
    def trace(
        self,
        model_fn: ModelFn,
        variables: Any,
        x: jax.Array,
        y: jax.Array,
        key: jax.Array,
        x_init: jax.Array | None = None,
    ) -> APGDTrace:
        """One run (no restarts, no clean-point check) with its per-iteration history.

        ``x_init`` replaces the random start (for L1 the first sparsity then comes from it, as in
        the reference's ``x_init`` path); ``key`` then only feeds the model's EoT draws.
        """
        self._check_inputs(x, y, self._num_classes(model_fn, variables, x, key))
        return self._single_run(model_fn, variables, x, y, y, key, x_init)

    @validated
    def run(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> AttackResult:
        x = jax.lax.stop_gradient(x)
        k_clean, k_runs = self._split_clean_key(key)
        clean_logits = self._clean_logits(model_fn, variables, x, k_clean)
        self._check_inputs(x, y, clean_logits.shape[-1])
        result = self._restarts(model_fn, variables, x, y, y, self._run_keys(k_runs, 1)[0])
        clean_loss = self._loss_fn()(clean_logits, y)
        return self._keep_clean_errors(result, x, y, clean_logits, clean_loss)


@dataclasses.dataclass(frozen=True)
class APGDTargeted(_APGDBase):
    """APGD-T (Croce & Hein 2020, sec. 3.3 and 4): APGD on the targeted DLR loss (eq. 6) towards
    each of the ``num_targets`` most likely wrong classes at the clean point in turn.

    Attributes as ``APGD``, plus ``num_targets`` (targets ``k = 2 .. n + 1``); ``loss`` is
    "dlr" (targeted DLR, the reference's choice for every norm) or "ce" (minus the cross-entropy
    towards the target). Total cost: at most ``num_targets * restarts`` runs (restarts
    vmapped, targets one after another). As in the reference, each target runs only on the points
    no earlier target broke: ``buckets`` are the static sizes they are gathered into
    (``compaction.on_active``; the default ``(1.0,)`` keeps the whole batch and only skips a target
    once every point is broken).
    """

    num_targets: int
    buckets: tuple[float, ...]

    _valid_losses = TARGETED_LOSSES

    def __post_init__(self):
        super().__post_init__()
        value = self.num_targets
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"num_targets must be a positive integer, got {value}")

    def _min_classes(self) -> int:
        needed = self.num_targets + 1
        return max(needed, 4) if self.loss == "dlr" else needed

    def _loss_fn(self):
        if self.loss == "dlr":
            return losses.targeted_dlr
        return lambda logits, yt: -losses.cross_entropy(logits, yt[1])

    @validated
    def trace(
        self,
        model_fn: ModelFn,
        variables: Any,
        x: jax.Array,
        y: jax.Array,
        key: jax.Array,
        x_init: jax.Array | None = None,
        target: jax.Array | None = None,
    ) -> APGDTrace:
        """One run towards ``target`` (default: the most likely wrong class at ``x``), as
        ``APGD.trace``."""
        self._check_inputs(x, y, self._num_classes(model_fn, variables, x, key))
        if target is None:
            k_clean = self._split_clean_key(key)[0]
            target = apgd_targets(self._clean_logits(model_fn, variables, x, k_clean), 1)[:, 0]
        return self._single_run(model_fn, variables, x, y, (y, target), key, x_init)

    @validated
    def run(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> AttackResult:
        x = jax.lax.stop_gradient(x)
        k_clean, k_runs = self._split_clean_key(key)
        clean_logits = self._clean_logits(model_fn, variables, x, k_clean)
        self._check_inputs(x, y, clean_logits.shape[-1])
        n_targets = int(self.num_targets)
        targets = apgd_targets(clean_logits, n_targets).T  # [n_targets, B]
        keys = self._run_keys(k_runs, n_targets)

        def per_target(best: AttackResult, inputs):
            target, target_keys = inputs  # [B]; [restarts] or [restarts, B]

            def run_rows(x_rows, y_rows, target_rows, *key_rows):
                keys_rows = jnp.moveaxis(key_rows[0], 0, 1) if key_rows else target_keys
                return self._restarts(
                    model_fn, variables, x_rows, y_rows, (y_rows, target_rows), keys_rows
                )

            rows = (x, y, target)
            if target_keys.ndim > 1:  # per-example keys travel with their rows
                rows += (jnp.moveaxis(target_keys, 1, 0),)
            new = compaction.on_active(run_rows, ~best.success, rows, best, self.buckets)
            return keep_better(best, new), None

        first_pixel = x[:, 0, 0, 0]
        init = AttackResult(
            x_adv=x,
            loss=jnp.full_like(first_pixel, -jnp.inf),
            success=jnp.zeros_like(first_pixel, bool),
        )
        result, _ = jax.lax.scan(per_target, init, (targets, keys))
        clean_loss = self._loss_fn()(clean_logits, (y, targets[0]))
        return self._keep_clean_errors(result, x, y, clean_logits, clean_loss)


def apgd(
    eps: float,
    steps: int = 100,
    *,
    norm: str = "linf",
    loss: str = "ce",
    restarts: int = 1,
    rho: float = 0.75,
    eot_samples: int = 1,
    use_largereps: bool = False,
) -> APGD:
    """APGD-CE / APGD-DLR (Croce & Hein 2020, Algorithm 1; defaults of fra31/auto-attack)."""
    return APGD(
        eps=eps,
        steps=steps,
        norm=norm,
        loss=loss,
        restarts=restarts,
        rho=rho,
        eot_samples=eot_samples,
        use_largereps=use_largereps,
    )


def apgd_t(
    eps: float,
    steps: int = 100,
    *,
    norm: str = "linf",
    num_targets: int = 9,
    restarts: int = 1,
    loss: str = "dlr",
    rho: float = 0.75,
    eot_samples: int = 1,
    use_largereps: bool = False,
    buckets: tuple[float, ...] = (1.0,),
) -> APGDTargeted:
    """APGD-T (Croce & Hein 2020): targeted DLR towards the 9 most likely wrong classes; ``y``
    are labels; each target only on the points still robust (``buckets``: see ``APGDTargeted``)."""
    return APGDTargeted(
        eps=eps,
        steps=steps,
        norm=norm,
        loss=loss,
        restarts=restarts,
        rho=rho,
        eot_samples=eot_samples,
        use_largereps=use_largereps,
        num_targets=num_targets,
        buckets=tuple(buckets),
    )
