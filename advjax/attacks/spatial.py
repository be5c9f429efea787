"""Spatial attacks: grid and random search over rotation-translations, and first-order attacks on
rotation-translation, affine, flow and integrated (affine + flow) warps.

* ``grid_adv``: GridAdv (Engstrom et al. 2019): the exhaustive grid of rotations and translations
  (31 angles in [-30, 30] degrees x 5 x 5 translations in [-3, 3] pixels = 775 points, the SRT
  document's App. B setting), per-example worst case.
* ``rand_adv``: RandAdv: one uniformly random transform of the same space.
* ``worst_of_k``: Worst-of-k (Engstrom et al. 2019): ``k = steps = 10`` random transforms,
  per-example worst case. Draw 0 is RandAdv's draw with the same key, so per example Worst-of-k
  is never better for the defender than RandAdv (success first, then loss).
  All three take ``mode``: ``"rt"`` (both), ``"t"`` (translations only, angle 0) or ``"r"``
  (rotations only); the SRT document's Table 3 names them RandAdv / GridAdv, RandAdv.T /
  GridAdv.T and RandAdv.R / GridAdv.R.
* ``rt_pgd``: first-order attack on ``(angle, tx, ty)`` (Engstrom et al. 2019): sign steps,
  projection onto the box, random start.
* ``affine_pgd``: the Pareto document's generic RT attack: PGD with sign steps on the 6-parameter
  increment ``||w_RT||_inf <= eps_affine`` of ``A = I + w_RT``.
* ``flow_pgd``: the Pareto document's flow attack, Eq. 2: PGD with sign steps on CE over the flow
  field ``||w_F||_inf <= eps_flow``. With ``tau > 0`` the attacker maximises
  ``loss - tau * L_flow(w_F in pixels)``, the untargeted form of stAdv's objective (Eq. 1 of the
  Pareto document minimises ``adv_loss + tau * L_flow``; here the adversarial loss is maximised,
  so the smoothness penalty enters with a minus sign).
* ``integrated_spatial``: the Pareto document's integrated spatial attack (Sec. 2): one PGD over
  ``w = [w_F, w_RT]`` with the grid ``T_{w_RT, w_F}(G) = (I + w_RT)[u v 1]^T + w_F``, separate Linf
  bounds ``(eps_flow, eps_affine)`` and step sizes ``(step_size_flow, step_size_affine)``.

Coordinates and units are those of ``advjax.threats.spatial``. Every attack is untargeted, takes
labels ``y``, and returns the usual ``AttackResult``; ``run_params`` returns ``(params, result)``
where ``params`` are the chosen transform parameters (``[B, 3]`` ``(angle_deg, tx, ty)`` for the
rotation-translation attacks, ``[B, 6]`` for affine, ``[B, H, W, 2]`` for flow,
``SpatialParams(flow, affine)`` for integrated) and ``result.x_adv == threat.apply(params, x)``.
Search and PGD keep the per-example worst case (success first, then the higher objective).

Defaults: the rotation-translation space (±30 degrees, ±3 pixels, 31 x 5 x 5 grid, worst of 10)
is Engstrom et al.'s, used by the SRT document (App. B) for CIFAR-10 and MNIST. The Pareto
document (Sec. 2) gives no values for ``eps_flow``, ``eps_affine``, the step sizes or the number of
steps, so ``eps_flow`` and ``eps_affine`` have no defaults; ``steps = 20`` and step sizes
``2.5 * bound / steps`` (Madry et al.'s rule) are advjax's choices, as are ``rt_pgd``'s.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advjax import losses
from advjax.attacks import compaction
from advjax.attacks.base import (
    Attack,
    AttackResult,
    ModelFn,
    better,
    check_nonnegative,
    split_keys,
    success,
    validated,
)
from advjax.attacks.gradient import madry_step_size
from advjax.threats.spatial import (
    AffineSet,
    FlowSet,
    IntegratedSet,
    RotationTranslation,
    smoothness,
)

MODES = ("rt", "t", "r")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(
            f"unknown mode {mode!r}; valid modes: {', '.join(MODES)} "
            "(rotations and translations, translations only, rotations only)"
        )
    return mode


def _check_count(**values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_labels(y: Any) -> None:
    if isinstance(y, tuple):
        raise ValueError("spatial attacks are untargeted: pass labels y [B], not (labels, targets)")


def _pick(take: jax.Array, new: Any, old: Any) -> Any:
    """Per example (leading axis), ``new`` where ``take`` else ``old``, for every leaf."""
    return jax.tree.map(
        lambda a, b: jnp.where(take.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old
    )


def _zeros_like(a: jax.Array, dtype: Any) -> jax.Array:
    """Zeros shaped like ``a`` that inherit its device-varying type inside ``shard_map`` (a
    constant would not, and a ``scan`` carry must keep one type). ``a != a & a == a`` is False
    for every value, NaN included."""
    return ((a != a) & (a == a)).astype(dtype)


def first_best(scores: jax.Array, oks: jax.Array) -> jax.Array:
    """Per-example index ``[B]`` of the best of ``N`` candidates (``scores``, ``oks``: ``[N, B]``).

    Folds the candidates in order with ``better`` (success first, then a strictly higher score),
    so among equally good candidates the first one wins: a Python loop over the candidates that
    keeps the running best gives the same index.
    """

    def fold(carry, inputs):
        score, ok, index = carry
        new_score, new_ok, new_index = inputs
        take = better(new_ok, new_score, ok, score)
        return (
            jnp.where(take, new_score, score),
            jnp.where(take, new_ok, ok),
            jnp.where(take, new_index, index),
        ), None

    n, b = scores.shape
    # Every carry varies over devices wherever scores or oks do (under ``shard_map``, oks can be
    # a constant, e.g. all False for a KL objective without labels, while scores vary).
    vary = _zeros_like(scores, jnp.int32) + _zeros_like(oks, jnp.int32)
    indices = jnp.arange(n, dtype=jnp.int32)[:, None] + vary
    first = (scores[0] + vary[0].astype(scores.dtype), oks[0] | vary[0].astype(bool), indices[0])
    (_, _, best), _ = jax.lax.scan(fold, first, (scores[1:], oks[1:], indices[1:]))
    return best


def _evaluate(model_fn: ModelFn, variables: Any, x_adv: jax.Array, y: Any, loss: Any):
    logits = model_fn(variables, x_adv)
    return losses.get_loss(loss)(logits, y), success(logits, y, False)


@dataclasses.dataclass(frozen=True)
class SpatialAttack(Attack):
    """Base class: ``run_params`` returns ``(params, AttackResult)``; ``run`` the result only."""

    @validated
    def run_params(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> tuple[Any, AttackResult]:
        raise NotImplementedError

    @validated
    def run(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> AttackResult:
        return self.run_params(model_fn, variables, x, y, key)[1]


def _mask_mode(params: jax.Array, mode: str) -> jax.Array:
    """Zeroes the rotation (``"t"``) or translation (``"r"``) columns of ``(angle, tx, ty)``."""
    if mode == "t":
        return params.at[:, 0].set(0.0)
    if mode == "r":
        return params.at[:, 1:].set(0.0)
    return params


@dataclasses.dataclass(frozen=True)
class GridSearch(SpatialAttack):
    """GridAdv: every transform of a grid, per-example worst case (Engstrom et al. 2019).

    The grid holds ``num_angles`` angles equally spaced in ``[-max_angle, max_angle]`` and
    ``num_translations`` values per axis in ``[-max_translation, max_translation]`` (one value, 0,
    when the count is 1 or the mode drops that part), enumerated with the angle slowest, then
    ``tx``, then ``ty``. Transforms are evaluated ``chunk_size`` at a time (``lax.map`` over chunks,
    ``vmap`` inside a chunk), so memory is bounded by ``chunk_size`` model evaluations of the batch.
    The chosen transform is, per example, the first misclassifying transform of highest ``loss``,
    or the first of highest ``loss`` when none misclassifies. ``result.loss`` and
    ``result.success`` are re-evaluated at ``x_adv``.

    ``early_stop`` (default): a chunk runs only on the examples that no earlier chunk
    misclassified, gathered into the smallest static bucket that holds them
    (``compaction.on_active``). Which examples are broken, and the transform chosen for the
    others, are unchanged; a broken example keeps the highest-loss misclassifying transform of the
    first chunk that broke it. On a model without spatial robustness most examples fall to the
    first chunks, so the search costs a fraction of the full grid.
    """

    threat: RotationTranslation
    num_angles: int
    num_translations: int
    mode: str
    chunk_size: int
    loss: Any
    early_stop: bool
    buckets: tuple[float, ...]

    def __post_init__(self):
        check_mode(self.mode)
        compaction.bucket_sizes(1, self.buckets)
        _check_count(
            num_angles=self.num_angles,
            num_translations=self.num_translations,
            chunk_size=self.chunk_size,
        )
        losses.get_loss(self.loss)

    def scaled(self, factor: Any) -> GridSearch:
        return dataclasses.replace(self, threat=self.threat.scaled(factor))

    def unit_grid(self) -> np.ndarray:
        """``[N, 3]`` grid points as fractions of the bounds (static)."""

        def axis(count: int, used: bool) -> np.ndarray:
            return np.linspace(-1.0, 1.0, count) if used and count > 1 else np.zeros(1)

        angles = axis(self.num_angles, self.mode != "t")
        shifts = axis(self.num_translations, self.mode != "r")
        return np.asarray(list(itertools.product(angles, shifts, shifts)), np.float32)

    def grid(self) -> jax.Array:
        """``[N, 3]`` grid of ``(angle_deg, tx, ty)``."""
        return jnp.asarray(self.unit_grid()) * self.threat.bounds

    @validated
    def run_params(self, model_fn, variables, x, y, key) -> tuple[jax.Array, AttackResult]:
        _check_labels(y)
        x = jax.lax.stop_gradient(x)
        grid = self.grid()
        num = grid.shape[0]
        chunk = min(self.chunk_size, num)
        num_chunks = math.ceil(num / chunk)
        padded = jnp.concatenate([grid, jnp.repeat(grid[-1:], num_chunks * chunk - num, axis=0)])
        # The padding repeats the last transform: never strictly better than it, never chosen.

        def chunk_best(transforms, x_rows, y_rows):
            """Per row, (score, success, index in chunk) of the chunk's best transform."""
            rows = x_rows.shape[0]

            def evaluate_one(transform):
                params = jnp.broadcast_to(transform, (rows, 3))
                return _evaluate(
                    model_fn, variables, self.threat.apply(params, x_rows), y_rows, self.loss
                )

            scores, oks = jax.vmap(evaluate_one)(transforms)  # [chunk, rows]
            best = first_best(scores, oks)
            at = jnp.arange(rows)
            return scores[best, at], oks[best, at], best

        def scan_chunk(carry, inputs):
            best_score, best_ok, best_index = carry
            transforms, offset = inputs
            if self.early_stop:
                score, ok, index = compaction.on_active(
                    lambda xr, yr: chunk_best(transforms, xr, yr),
                    ~best_ok,
                    (x, y),
                    (best_score, best_ok, jnp.zeros_like(best_index)),
                    self.buckets,
                )
            else:
                score, ok, index = chunk_best(transforms, x, y)
            take = better(ok, score, best_ok, best_score)  # strict: a fallback row never wins
            return (
                jnp.where(take, score, best_score),
                jnp.where(take, ok, best_ok),
                jnp.where(take, offset + index, best_index),
            ), None

        false = _zeros_like(y, bool)
        init = (jnp.where(false, 0.0, -jnp.inf).astype(jnp.float32), false, false.astype(jnp.int32))
        offsets = jnp.arange(num_chunks, dtype=jnp.int32) * chunk
        (_, _, best), _ = jax.lax.scan(
            scan_chunk, init, (padded.reshape(num_chunks, chunk, 3), offsets)
        )
        params = grid[jnp.minimum(best, num - 1)]
        x_adv = self.threat.apply(params, x)
        loss, ok = _evaluate(model_fn, variables, x_adv, y, self.loss)
        return params, AttackResult(x_adv=x_adv, loss=loss, success=ok)


def draw_keys(key: jax.Array, num: int) -> jax.Array:
    """``num`` keys (``[num]`` or ``[num, B]``) whose first entry is ``key`` itself, so that the
    first draw of a k-try search is the draw of a one-try search with the same key."""
    if num == 1:
        return key[None]
    return jnp.concatenate([key[None], split_keys(key, num)[1:]])


@dataclasses.dataclass(frozen=True)
class RandomSearch(SpatialAttack):
    """RandAdv (``steps = 1``) and Worst-of-k (``steps = k``): uniformly random transforms of the
    rotation-translation box (per example), per-example worst case (Engstrom et al. 2019).

    Draw ``i`` uses ``draw_keys(key, k)[i]`` through ``threat.init`` (per-example keys give
    per-example draws); draw 0 uses ``key`` itself. ``mode`` zeroes the angle (``"t"``) or the
    translations (``"r"``) of every draw. ``result.loss``/``success`` are re-evaluated at ``x_adv``.
    """

    threat: RotationTranslation
    steps: int
    mode: str
    loss: Any

    def __post_init__(self):
        check_mode(self.mode)
        _check_count(steps=self.steps)
        losses.get_loss(self.loss)

    def scaled(self, factor: Any) -> RandomSearch:
        return dataclasses.replace(self, threat=self.threat.scaled(factor))

    def draw(self, key: jax.Array, x: jax.Array) -> jax.Array:
        """One uniformly random transform per example, ``[B, 3]``."""
        return _mask_mode(self.threat.init(key, x), self.mode)

    @validated
    def run_params(self, model_fn, variables, x, y, key) -> tuple[jax.Array, AttackResult]:
        _check_labels(y)
        x = jax.lax.stop_gradient(x)
        draws = jax.vmap(lambda k: self.draw(k, x))(draw_keys(key, self.steps))  # [k, B, 3]
        if self.steps == 1:
            params = draws[0]
        else:
            scores, oks = jax.vmap(
                lambda p: _evaluate(model_fn, variables, self.threat.apply(p, x), y, self.loss)
            )(draws)
            index = first_best(scores, oks)
            params = draws[index, jnp.arange(x.shape[0])]
        x_adv = self.threat.apply(params, x)
        loss, ok = _evaluate(model_fn, variables, x_adv, y, self.loss)
        return params, AttackResult(x_adv=x_adv, loss=loss, success=ok)


@dataclasses.dataclass(frozen=True)
class SpatialPGD(SpatialAttack):
    """Projected sign-gradient ascent on the parameters of a spatial threat model.

    ``w_{t+1} = Proj(w_t + alpha * sign(grad_w objective(x_{w_t})))`` with ``x_w = threat.apply(w,
    x)`` always warped from the clean ``x`` (the Pareto document's update re-warps ``x^t``; warping
    the clean image with the current ``w`` keeps ``x_adv`` a member of the threat set, as stated in
    its Eq. 8). ``objective = loss(model(x_w), y) - tau * L_flow(flow of w in pixels)`` (``tau``
    only for threats with a flow). With ``keep_best`` the per-example best iterate (success first,
    then the objective) is returned; ``result.loss`` is that objective.

    Attributes:
      threat: ``RotationTranslation``, ``AffineSet``, ``FlowSet`` or ``IntegratedSet``.
      step_size: in the threat's ``ascend`` format: ``(angle, translation)`` step sizes, a float
        (affine, flow) or ``(flow, affine)`` step sizes (integrated).
      steps: number of ascent steps.
      loss: a name from ``advjax.losses.LOSSES`` or a callable ``(logits, y) -> [B]``.
      tau: weight of stAdv's flow smoothness penalty (``FlowSet`` / ``IntegratedSet`` only).
      random_init: start uniformly at random in the set instead of at the identity.
      keep_best: return the best iterate per example instead of the last one.
    """

    threat: Any
    step_size: Any
    steps: int
    loss: Any
    tau: float
    random_init: bool
    keep_best: bool

    def __post_init__(self):
        if not isinstance(self.threat, RotationTranslation | AffineSet | FlowSet | IntegratedSet):
            raise ValueError(
                "threat must be RotationTranslation, AffineSet, FlowSet or IntegratedSet, got "
                f"{type(self.threat).__name__}"
            )
        sizes = self.step_size if isinstance(self.step_size, tuple) else (self.step_size,)
        expected = 2 if isinstance(self.threat, RotationTranslation | IntegratedSet) else 1
        if len(sizes) != expected:
            raise ValueError(
                f"{type(self.threat).__name__} takes {expected} step size(s), got {self.step_size}"
            )
        check_nonnegative(**{f"step_size[{i}]": s for i, s in enumerate(sizes)})
        check_nonnegative(steps=self.steps, tau=self.tau)
        if int(self.steps) != self.steps:
            raise ValueError(f"steps must be an integer, got {self.steps}")
        if self.tau and not isinstance(self.threat, FlowSet | IntegratedSet):
            raise ValueError("tau (flow smoothness) needs a FlowSet or IntegratedSet threat")
        losses.get_loss(self.loss)

    def scaled(self, factor: Any) -> SpatialPGD:
        if isinstance(self.step_size, tuple):
            step = tuple(s * factor for s in self.step_size)
        else:
            step = self.step_size * factor
        return dataclasses.replace(self, threat=self.threat.scaled(factor), step_size=step)

    @validated
    def run_params(self, model_fn, variables, x, y, key) -> tuple[Any, AttackResult]:
        _check_labels(y)
        x = jax.lax.stop_gradient(x)
        loss_fn = losses.get_loss(self.loss)
        threat = self.threat

        def objective(params):
            x_adv = threat.apply(params, x)
            logits = model_fn(variables, x_adv)
            per_example = loss_fn(logits, y)
            if self.tau:
                per_example = per_example - self.tau * smoothness(threat.flow_pixels(params))
            return jnp.sum(per_example), (per_example, success(logits, y, False), x_adv)

        grad_fn = jax.grad(objective, has_aux=True)
        params0 = threat.init(key, x) if self.random_init else threat.identity(x)
        first_pixel = x[:, 0, 0, 0]
        best = (
            params0,
            x,
            jnp.full_like(first_pixel, -jnp.inf),
            jnp.full_like(first_pixel, False, bool),
        )

        def keep(best, params, x_adv, score, ok):
            take = better(ok, score, best[3], best[2])
            return _pick(take, (params, x_adv, score, ok), best)

        def step(carry, _):
            params, best = carry
            grad, (score, ok, x_adv) = grad_fn(params)
            if self.keep_best:
                best = keep(best, params, x_adv, score, ok)
            params = threat.project(threat.ascend(params, grad, self.step_size))
            return (params, best), None

        (params, best), _ = jax.lax.scan(step, (params0, best), None, length=int(self.steps))
        score, ok, x_adv = objective(params)[1]
        if self.keep_best:
            params, x_adv, score, ok = keep(best, params, x_adv, score, ok)
        params = jax.lax.stop_gradient(params)
        return params, AttackResult(x_adv=jax.lax.stop_gradient(x_adv), loss=score, success=ok)


# ---------------------------------------------------------------------------------- factories


def grid_adv(
    max_angle: float = 30.0,
    max_translation: float = 3.0,
    *,
    num_angles: int = 31,
    num_translations: int = 5,
    mode: str = "rt",
    padding: str = "zeros",
    chunk_size: int = 25,
    loss: Any = "ce",
    early_stop: bool = True,
    buckets: tuple[float, ...] = compaction.DEFAULT_BUCKETS,
) -> GridSearch:
    """GridAdv (Engstrom et al. 2019; SRT document App. B): ±30 degrees in 31 steps, ±3 pixels in
    5 steps per axis (775 transforms); ``mode="t"``/``"r"`` give GridAdv.T / GridAdv.R.
    ``early_stop``: stop searching on examples already misclassified (``GridSearch``)."""
    return GridSearch(
        threat=RotationTranslation(max_angle, max_translation, padding),
        num_angles=num_angles,
        num_translations=num_translations,
        mode=mode,
        chunk_size=chunk_size,
        loss=loss,
        early_stop=early_stop,
        buckets=tuple(buckets),
    )


def rand_adv(
    max_angle: float = 30.0,
    max_translation: float = 3.0,
    *,
    mode: str = "rt",
    padding: str = "zeros",
    loss: Any = "ce",
) -> RandomSearch:
    """RandAdv (SRT document App. B): one uniformly random rotation-translation per example from
    GridAdv's space; ``mode="t"``/``"r"`` give RandAdv.T / RandAdv.R."""
    threat = RotationTranslation(max_angle, max_translation, padding)
    return RandomSearch(threat=threat, steps=1, mode=mode, loss=loss)


def worst_of_k(
    max_angle: float = 30.0,
    max_translation: float = 3.0,
    steps: int = 10,
    *,
    mode: str = "rt",
    padding: str = "zeros",
    loss: Any = "ce",
) -> RandomSearch:
    """Worst-of-k (Engstrom et al. 2019, ``random_tries = 10``): the per-example worst of
    ``k = steps`` uniformly random rotation-translations; draw 0 is ``rand_adv``'s draw with the
    same key."""
    threat = RotationTranslation(max_angle, max_translation, padding)
    return RandomSearch(threat=threat, steps=steps, mode=mode, loss=loss)


def _default_step(eps: Any, steps: int, step: Any) -> Any:
    """Madry et al.'s rule ``2.5 eps / steps`` when no step size is given."""
    return madry_step_size(eps, steps) if step is None else step


def _sign_pgd(
    threat: Any, step_size: Any, steps: int, loss: Any, tau: float, random_init: bool
) -> SpatialPGD:
    """``SpatialPGD`` keeping the best iterate."""
    return SpatialPGD(
        threat=threat,
        step_size=step_size,
        steps=steps,
        loss=loss,
        tau=tau,
        random_init=random_init,
        keep_best=True,
    )


def rt_pgd(
    max_angle: float = 30.0,
    max_translation: float = 3.0,
    step_size_angle: float | None = None,
    step_size_translation: float | None = None,
    steps: int = 20,
    *,
    padding: str = "zeros",
    loss: Any = "ce",
    random_init: bool = True,
) -> SpatialPGD:
    """First-order rotation-translation attack (Engstrom et al. 2019): sign-PGD on
    ``(angle, tx, ty)`` in ``[-max_angle, max_angle] x [-max_translation, max_translation]^2`` from
    a random start; step sizes default to ``2.5 * bound / steps``."""
    step_size = (
        _default_step(max_angle, steps, step_size_angle),
        _default_step(max_translation, steps, step_size_translation),
    )
    threat = RotationTranslation(max_angle, max_translation, padding)
    return _sign_pgd(threat, step_size, steps, loss, 0.0, random_init)


def affine_pgd(
    eps_affine: float,
    step_size: float | None = None,
    steps: int = 20,
    *,
    padding: str = "zeros",
    loss: Any = "ce",
    random_init: bool = True,
) -> SpatialPGD:
    """The Pareto document's generic RT attack: ``max CE(x_{w_RT}, y)`` s.t. ``||w_RT||_inf <=
    eps_affine`` (Sec. 2) by sign-PGD on the 6-parameter increment of ``A = I + w_RT``."""
    step = _default_step(eps_affine, steps, step_size)
    return _sign_pgd(AffineSet(eps_affine, padding), step, steps, loss, 0.0, random_init)


def flow_pgd(
    eps_flow: float,
    step_size: float | None = None,
    steps: int = 20,
    *,
    tau: float = 0.0,
    padding: str = "zeros",
    loss: Any = "ce",
    random_init: bool = True,
) -> SpatialPGD:
    """The Pareto document's flow attack, Eq. 2: ``max CE(x_{w_F}, y)`` s.t. ``||w_F||_inf <=
    eps_flow`` (normalised units) by sign-PGD. ``tau > 0`` maximises ``CE - tau * L_flow`` (stAdv's
    smoothness penalty, Xiao et al. 2018, on the flow in pixels)."""
    step = _default_step(eps_flow, steps, step_size)
    return _sign_pgd(FlowSet(eps_flow, padding), step, steps, loss, tau, random_init)


def integrated_spatial(
    eps_flow: float,
    eps_affine: float,
    step_size_flow: float | None = None,
    step_size_affine: float | None = None,
    steps: int = 20,
    *,
    tau: float = 0.0,
    padding: str = "zeros",
    loss: Any = "ce",
    random_init: bool = True,
) -> SpatialPGD:
    """The Pareto document's integrated spatial attack (Sec. 2, Eq. 8 and the update below it):
    sign-PGD on ``w = [w_F, w_RT]`` with bounds ``(eps_flow, eps_affine)`` and step sizes
    ``(step_size_flow, step_size_affine)`` (default ``2.5 eps / steps`` each), warping by
    ``T_{w_RT, w_F}(G) = (I + w_RT)[u v 1]^T + w_F``."""
    step_size = (
        _default_step(eps_flow, steps, step_size_flow),
        _default_step(eps_affine, steps, step_size_affine),
    )
    threat = IntegratedSet(eps_flow, eps_affine, padding)
    return _sign_pgd(threat, step_size, steps, loss, tau, random_init)
