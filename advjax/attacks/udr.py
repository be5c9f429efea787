"""UDR's soft-ball adversary (thesis Ch. 5; spec ``thesis_ch5_6.md`` Sec. 3.5, 4.1-4.5).

Algorithm 1, step 2 (Eq. 18), per example, ``k`` iterations from ``x_0 = x + U(-eps, eps)``::

    x_inter = x_n + eta * sign(grad_x g(x_n, x, y))           # push: sign ascent on the risk
    x_{n+1} = clip(x_inter - eta * lam * grad ĉ(x_inter, x), 0, 1)   # pull instead of a projection

The pull is along the raw gradient of the transport cost ``ĉ`` (the sign goes on ``grad g`` only,
spec P1); the [0, 1] clip is applied after every step (spec P17). Two costs:

* ``cost="squared_hinge"`` (the default): the released code's elementwise pull, the gradient of
  ``ĉ(x', x) = sum_i max(0, |x'_i - x_i| - eps)^2 / (2 tau)`` (spec Sec. 4.4). It is zero inside
  the Linf ball, so with ``kappa = eta lam / tau`` a step keeps ``(1 - kappa)`` of each pixel's
  excess over ``eps``. Default ``tau = eta`` and ``lam = 1`` give ``kappa = 1``, PGD's Linf
  projection bit for bit: UDR starts as PGD-AT and the learned ``lam`` then softens the ball
  (spec P3's recommendation, consistent with Table 5). ``kappa`` is capped at 1 (``cap_pull``):
  a pull never crosses the ball's surface (spec Sec. 4.5 and P4), and ``tau -> 0`` or
  ``lam >= tau / eta`` is the hard ball, so the attack is advjax's Linf PGD (Theorem 1, Eq. 15).
* ``cost="soft"``: the thesis's smoothed cost (Eq. 16) on an L1, L2 (``1/2 ||.||_2^2``) or Linf
  ground cost ``c``: ``ĉ = c`` inside ``{c < eps}``, ``eps + (c - eps) / tau`` outside, whose
  gradient is ``grad c`` or ``grad c / tau`` with the corrected gradients of spec Sec. 4.3
  (``sign(delta)``; ``delta``; ``sign(delta_j)`` at ``j = argmax |delta|`` only), not the thesis's
  Table 11. Default ``tau = 2 eta`` (Sec. 5.2). The thesis pulls with Linf on MNIST and L2 on
  CIFAR-10; the L2 cost compared with an Linf ``eps`` is dimensionally inconsistent (spec P3).

``lam`` may be a traced scalar: ``attack.with_lambda(lam)`` is the attack with the defense
state's dual variable (``advjax.defenses.udr_state``), one compilation for every value.

``domain`` (``advjax.validation.Domain``) lets the attack run on inputs that are not images, such
as the toy 2-D points of App. E: ``udr(..., domain="features")`` checks a float ``[batch, ...]``
batch and drops the [0, 1] clip (``Domain("features", (lo, hi))`` clips to that box instead).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from advjax import losses
from advjax.attacks.base import Attack, AttackResult, ModelFn, check_nonnegative, validated
from advjax.attacks.gradient import UNROLL_MAX_STEPS, GradientAttack
from advjax.threats.lp import LpBall, clip_box, is_concrete
from advjax.validation import IMAGES, Domain, as_domain

GROUND_COSTS = ("linf", "l2", "l1")
COSTS = ("squared_hinge", "soft")


def _check(name: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid values: {', '.join(valid)}")
    return value


def _axes(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def _per_example(v: jax.Array, x: jax.Array) -> jax.Array:
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


# ----------------------------------------------------------------------------------------------
# Costs: per-example values [B] and gradients with respect to x' (shaped like x).


def ground_cost_value(x_adv: jax.Array, x: jax.Array, ground_cost: str = "linf") -> jax.Array:
    """``c_X(x, x')`` per example (Table 11): ``sum |delta|``, ``1/2 sum delta^2`` or
    ``max |delta|``, with ``delta = x' - x``."""
    delta = x_adv - x
    if _check("ground_cost", ground_cost, GROUND_COSTS) == "l1":
        return jnp.sum(jnp.abs(delta), _axes(delta))
    if ground_cost == "l2":
        return 0.5 * jnp.sum(delta * delta, _axes(delta))
    return jnp.max(jnp.abs(delta), _axes(delta))


def ground_cost_grad(x_adv: jax.Array, x: jax.Array, ground_cost: str = "linf") -> jax.Array:
    """``grad_{x'} c_X`` with spec Sec. 4.3's corrections of Table 11: ``sign(delta)`` (L1),
    ``delta`` (L2), ``sign(delta_j)`` at ``j = argmax_i |delta_i|`` and 0 elsewhere (Linf; the
    first maximiser on ties)."""
    delta = x_adv - x
    if _check("ground_cost", ground_cost, GROUND_COSTS) == "l1":
        return jnp.sign(delta)
    if ground_cost == "l2":
        return delta
    flat = jnp.abs(delta.reshape(delta.shape[0], -1))
    onehot = jax.nn.one_hot(jnp.argmax(flat, axis=1), flat.shape[1], dtype=delta.dtype)
    return onehot.reshape(delta.shape) * jnp.sign(delta)


def soft_cost(
    x_adv: jax.Array, x: jax.Array, eps: Any, tau: Any, ground_cost: str = "linf"
) -> jax.Array:
    """Eq. 16: ``ĉ = c`` where ``c < eps``, ``eps + (c - eps) / tau`` elsewhere (per example);
    ``ĉ -> `` the hard-ball cost of Eq. 13 as ``tau -> 0``."""
    c = ground_cost_value(x_adv, x, ground_cost)
    return jnp.where(c < eps, c, eps + (c - eps) / tau)


def soft_cost_grad(
    x_adv: jax.Array, x: jax.Array, eps: Any, tau: Any, ground_cost: str = "linf"
) -> jax.Array:
    """``grad_{x'} ĉ`` of Eq. 16 (Sec. 3.5): ``grad c`` inside the ball, ``grad c / tau`` outside
    (the right derivative on the sphere ``c = eps``)."""
    c = ground_cost_value(x_adv, x, ground_cost)
    slope = jnp.where(c < eps, 1.0, 1.0 / tau).astype(x_adv.dtype)
    return _per_example(slope, x_adv) * ground_cost_grad(x_adv, x, ground_cost)


def _excess(x_adv: jax.Array, x: jax.Array, eps: Any) -> jax.Array:
    """``x' - Proj_{Linf ball}(x')``: each pixel's signed excess over ``eps``."""
    return x_adv - jnp.clip(x_adv, x - eps, x + eps)


def squared_hinge_cost(x_adv: jax.Array, x: jax.Array, eps: Any, tau: Any) -> jax.Array:
    """The released code's cost (spec Sec. 4.4): ``sum_i max(0, |x'_i - x_i| - eps)^2 / (2 tau)``
    per example, zero inside the Linf ball."""
    e = _excess(x_adv, x, eps)
    return jnp.sum(e * e, _axes(e)) / (2.0 * tau)


def squared_hinge_grad(x_adv: jax.Array, x: jax.Array, eps: Any, tau: Any) -> jax.Array:
    """``grad_{x'}`` of ``squared_hinge_cost``:
    ``(delta - sign(delta) eps) 1{|delta| > eps} / tau``."""
    return _excess(x_adv, x, eps) / tau


def transport_cost(
    x_adv: jax.Array,
    x: jax.Array,
    eps: Any,
    tau: Any,
    *,
    cost: str = "squared_hinge",
    ground_cost: str = "linf",
) -> jax.Array:
    """``ĉ(x', x)`` per example for ``cost`` (``"squared_hinge"`` needs the Linf ground cost)."""
    if _check("cost", cost, COSTS) == "soft":
        return soft_cost(x_adv, x, eps, tau, ground_cost)
    return squared_hinge_cost(x_adv, x, eps, tau)


def transport_cost_grad(
    x_adv: jax.Array,
    x: jax.Array,
    eps: Any,
    tau: Any,
    *,
    cost: str = "squared_hinge",
    ground_cost: str = "linf",
) -> jax.Array:
    """``grad_{x'} ĉ(x', x)`` for ``cost``."""
    if _check("cost", cost, COSTS) == "soft":
        return soft_cost_grad(x_adv, x, eps, tau, ground_cost)
    return squared_hinge_grad(x_adv, x, eps, tau)


def pull_factor(step_size: Any, lam: Any, tau: Any, cap: bool = True) -> Any:
    """``kappa = eta lam / tau`` of the squared-hinge pull, capped at 1 with ``cap``
    (``tau = 0`` is the hard ball, ``kappa = 1``)."""
    scale = step_size * lam
    ratio = scale / jnp.where(tau > 0, tau, 1.0)
    return jnp.where(scale >= tau, 1.0, ratio) if cap else ratio


def pull_back(
    x_inter: jax.Array,
    x: jax.Array,
    *,
    eps: Any,
    step_size: Any,
    lam: Any,
    tau: Any,
    cost: str = "squared_hinge",
    ground_cost: str = "linf",
    cap_pull: bool = True,
) -> jax.Array:
    """Algorithm 1 step 2(b)ii: ``x_inter - eta lam grad ĉ(x_inter, x)`` (no [0, 1] clip).

    The squared hinge is computed as ``P + (1 - kappa) (x_inter - P)``, ``P`` the Linf-ball
    projection, so that ``kappa = 1`` gives ``P`` exactly. For ``cost="soft"`` with the L2 ground
    cost this is Eq. 29: ``(1 - eta lam s) x_inter + eta lam s x``, ``s = 1`` inside the ball and
    ``1 / tau`` outside.
    """
    if _check("cost", cost, COSTS) == "soft":
        grad = soft_cost_grad(x_inter, x, eps, tau, ground_cost)
        return x_inter - (step_size * lam) * grad
    projected = jnp.clip(x_inter, x - eps, x + eps)
    kappa = pull_factor(step_size, lam, tau, cap_pull)
    return projected + (1.0 - kappa) * (x_inter - projected)


# ----------------------------------------------------------------------------------------------
# The attack


@dataclasses.dataclass(frozen=True)
class SoftBall:
    """UDR's stand-in for a threat model inside ``GradientAttack``'s loop: PGD's Linf random
    start (same key usage), sign direction, and ``pull_back`` + [0, 1] clip where PGD projects
    (the clip is to ``bounds``, none for ``None``)."""

    eps: Any
    step_size: Any
    lam: Any
    tau: Any
    cost: str
    ground_cost: str
    cap_pull: bool
    bounds: tuple[float, float] | None = (0.0, 1.0)

    def init(self, key: jax.Array, x: jax.Array) -> jax.Array:
        """``clip(x + U(-eps, eps), 0, 1)``: ``LpBall("linf", eps).init``, PGD's start."""
        return LpBall("linf", self.eps, bounds=self.bounds).init(key, x)

    def direction(self, grad: jax.Array, x_adv: jax.Array) -> jax.Array:
        del x_adv
        return jnp.sign(grad)

    def project(self, x_inter: jax.Array, x: jax.Array) -> jax.Array:
        pulled = pull_back(
            x_inter,
            x,
            eps=self.eps,
            step_size=self.step_size,
            lam=self.lam,
            tau=self.tau,
            cost=self.cost,
            ground_cost=self.ground_cost,
            cap_pull=self.cap_pull,
        )
        return clip_box(pulled, self.bounds)


@dataclasses.dataclass(frozen=True)
class UDRAttack(Attack):
    """The UDR adversary (Algorithm 1, Eq. 18); built by ``udr``, which holds the defaults.

    It is ``GradientAttack``'s loop (same objective, random start, keys, best-iterate rule) with
    the projection replaced by the soft-ball pull (``SoftBall``). ``run(...).loss`` is the risk
    ``g`` (the attack loss) at ``x_adv``, without the ``-lam ĉ`` term.

    Attributes:
      eps: the ball radius ``eps`` of ``ĉ`` and of the random start.
      step_size: ``eta``, of both the sign step and the pull.
      steps: ``k``.
      lam: the dual variable ``lambda >= 0`` (a float, or a traced scalar: ``with_lambda``).
      tau: the temperature of ``ĉ``.
      cost: ``"squared_hinge"`` (released code) or ``"soft"`` (Eq. 16).
      ground_cost: ``"linf"``, ``"l2"`` or ``"l1"``: ``c_X`` of the soft cost.
      cap_pull: cap the squared-hinge pull factor ``eta lam / tau`` at 1.
      loss: a name from ``advjax.losses.LOSSES`` or a callable ``(logits, y) -> [B]``.
      targeted: descend the loss towards ``y`` (the targets).
      keep_best: return the best iterate (success, then loss) instead of the last (Algorithm 1).
      unroll: ``lax.scan`` unroll factor of the step loop.
      domain: the inputs' ``Domain`` (checks, and the box of the clip).
    """

    eps: Any
    step_size: Any
    steps: int
    lam: Any
    tau: Any
    cost: str
    ground_cost: str
    cap_pull: bool
    loss: Any
    targeted: bool
    keep_best: bool
    unroll: int | bool
    domain: Domain = IMAGES

    def __post_init__(self):
        object.__setattr__(self, "domain", as_domain(self.domain))
        check_nonnegative(eps=self.eps, step_size=self.step_size, lam=self.lam, tau=self.tau)
        if isinstance(self.steps, bool) or int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps}")
        _check("cost", self.cost, COSTS)
        _check("ground_cost", self.ground_cost, GROUND_COSTS)
        if self.cost == "squared_hinge" and self.ground_cost != "linf":
            raise ValueError(
                f"cost='squared_hinge' is the released code's elementwise Linf-box cost; "
                f"ground_cost={self.ground_cost!r} needs cost='soft'"
            )
        needs_positive_tau = self.cost == "soft" or not self.cap_pull
        if needs_positive_tau and is_concrete(self.tau) and not self.tau > 0:
            raise ValueError(
                f"tau must be > 0 for this cost (the pull divides by it), got {self.tau}"
            )
        losses.get_loss(self.loss)

    def with_lambda(self, lam: Any) -> UDRAttack:
        """The attack with dual variable ``lam`` (a float or a traced scalar)."""
        return dataclasses.replace(self, lam=lam)

    def scaled(self, factor: Any) -> UDRAttack:
        """Budget times ``factor``: ``eps`` and ``eta``, and ``tau`` for the squared hinge (whose
        ``tau`` is in pixel units, so ``kappa = eta lam / tau`` stays); the soft cost's ``tau`` is
        a slope ratio and stays."""
        tau = self.tau * factor if self.cost == "squared_hinge" else self.tau
        return dataclasses.replace(
            self, eps=self.eps * factor, step_size=self.step_size * factor, tau=tau
        )

    def as_gradient_attack(self) -> GradientAttack:
        """The same attack as a ``GradientAttack`` whose threat is a ``SoftBall``."""
        ball = SoftBall(
            self.eps,
            self.step_size,
            self.lam,
            self.tau,
            self.cost,
            self.ground_cost,
            self.cap_pull,
            self.domain.bounds,
        )
        return GradientAttack(
            threat=ball,
            step_size=self.step_size,
            steps=self.steps,
            loss=self.loss,
            targeted=self.targeted,
            random_init=True,
            momentum=0.0,
            keep_best=self.keep_best,
            unroll=self.unroll,
            domain=self.domain,
        )

    @validated
    def run(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> AttackResult:
        return self.as_gradient_attack().run(model_fn, variables, x, y, key)


def udr(
    eps: float,
    step_size: float,
    steps: int,
    *,
    lam: float = 1.0,
    ground_cost: str = "linf",
    cost: str = "squared_hinge",
    tau: float | None = None,
    loss: Any = "ce",
    targeted: bool = False,
    keep_best: bool = False,
    cap_pull: bool = True,
    unroll: int | bool | None = None,
    domain: Any = "image",
) -> UDRAttack:
    """UDR's soft-ball attack (Algorithm 1): sign ascent on ``loss`` from a uniform random start,
    each step followed by the pull ``-eta lam grad ĉ`` and a [0, 1] clip; last iterate.

    Defaults follow spec P3: the released code's ``cost="squared_hinge"`` with ``tau = eta`` and
    ``lam = 1``, which is Linf PGD exactly until the learned ``lam`` moves. ``cost="soft"`` is
    Eq. 16 on ``ground_cost`` with ``tau = 2 eta`` by default (the thesis's rule, Sec. 5.2).
    For a TRADES-style objective pass ``loss="kl_from_reference"`` and the clean logits as ``y``.
    ``unroll=None`` unrolls fully up to ``UNROLL_MAX_STEPS`` steps, as ``pgd``. ``domain``:
    ``"image"`` (NHWC in [0, 1]), ``"features"`` (any ``[batch, ...]``, no clip) or an
    ``advjax.validation.Domain``, as ``pgd``.
    """
    if tau is None:
        tau = step_size if cost == "squared_hinge" else 2 * step_size
    if unroll is None:
        unroll = int(steps) <= UNROLL_MAX_STEPS
    return UDRAttack(
        eps=eps,
        step_size=step_size,
        steps=steps,
        lam=lam,
        tau=tau,
        cost=cost,
        ground_cost=ground_cost,
        cap_pull=cap_pull,
        loss=loss,
        targeted=targeted,
        keep_best=keep_best,
        unroll=unroll,
        domain=as_domain(domain),
    )
