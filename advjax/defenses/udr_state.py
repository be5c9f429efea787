"""UDR's learned dual variable ``lambda`` (spec ``thesis_ch5_6.md`` Sec. 4.1, Eq. 19; P4-P6).

``UDRLambda`` is a ``StateRule``: one global scalar, updated by projected (sub)gradient descent on
the dual objective (Eq. 17), whose ``lambda``-derivative is ``eps - E[stat]`` (Danskin)::

    lambda <- clip(lambda - lr (eps - mean(stat)), 0, lam_max)                        (19)

``stat`` is a per-example distance of the adversary ``x'`` (view ``view``) from ``x``, averaged
over the batch on each device (``statistics``) and over devices and hosts by the train step before
``update`` (so every replica holds the same ``lambda``, P6), and over ``period`` steps. The three
statements of the spec (P5) are the choices of ``statistic``:

* ``"mean_abs"`` (default): the released code's per-pixel mean ``|x' - x|`` (``1/d ||delta||_1``),
  with ``period = 10``, ``lr = 0.02``, ``lambda_0 = 1`` (spec Sec. 4.4). It is below ``eps`` for
  a PGD-like adversary, so ``lambda`` slowly decreases: the ball softens, as in Table 5.
* ``"soft"``: Eq. 19 literally, ``ĉ`` of Eq. 16 with the Linf ground cost (App. G) and ``tau``.
* ``"squared_hinge"``: the released code's pull cost, Danskin's gradient for that cost.

With the default attack (squared hinge, ``tau = eta``), ``"soft"`` holds ``lambda`` near 1 (below
1 the excess makes ``ĉ > eps`` and ``lambda`` rises back: PGD), and ``"squared_hinge"`` (about 0
inside the box) lowers ``lambda`` by ``lr eps`` per update toward 0; the code's statistic is the
one whose dynamics the tables reflect (``lambda`` about 0.7 after 200 epochs, spec Sec. 4.5).
The code also updates on the first step of each epoch (``i % 10 == 0``); here every
``period``-th step. The statistic is compared with the full ``eps``: under an epsilon warm-up
``lambda`` falls while the budget ramps up.

``lambda`` reaches the attacks through ``Adversary(attack, from_state=LambdaFromState())``: each
step the attack becomes ``attack.with_lambda(state["lam"])`` (a traced scalar: no recompilation).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from advjax.attacks import Attack
from advjax.attacks.udr import GROUND_COSTS, UDRAttack, transport_cost
from advjax.defenses.core import CLEAN, check_choice

LAMBDA = "lam"
STATISTICS = ("mean_abs", "soft", "squared_hinge")


def distance_statistic(
    x_adv: jax.Array,
    x: jax.Array,
    statistic: str = "mean_abs",
    *,
    eps: Any = 0.0,
    tau: Any = 1.0,
    ground_cost: str = "linf",
) -> jax.Array:
    """The per-example distance behind the ``lambda`` update (``[B]``; see the module doc)."""
    check_choice("statistic", statistic, STATISTICS)
    if statistic == "mean_abs":
        delta = jnp.abs(x_adv - x)
        return jnp.mean(delta.reshape(delta.shape[0], -1), axis=1)
    return transport_cost(x_adv, x, eps, tau, cost=statistic, ground_cost=ground_cost)


@dataclasses.dataclass(frozen=True)
class UDRLambda:
    """The dual variable of UDR as defense state (Eq. 19).

    State: ``lam`` (used by this step's adversaries), ``sum`` and ``count`` (statistics since the
    last update), ``last`` (the previous step's statistic, for the log). Metrics: ``udr_lambda``
    and ``udr_statistic``.

    Attributes:
      eps: the budget ``eps`` of Eq. 19 (the attack's).
      view: the adversary's view name.
      statistic: ``"mean_abs"``, ``"soft"`` or ``"squared_hinge"``.
      tau, ground_cost: of ``ĉ`` for the ``"soft"`` / ``"squared_hinge"`` statistics.
      learning_rate: ``eta_lambda``.
      initial: ``lambda_0``.
      period: update every ``period`` steps with the mean statistic over them (1: every step).
      lam_max: an optional upper bound (``tau / eta`` stops the code's pull overshooting, P4).
    """

    eps: float
    view: str = "adv"
    statistic: str = "mean_abs"
    tau: float = 1.0
    ground_cost: str = "linf"
    learning_rate: float = 0.02
    initial: float = 1.0
    period: int = 10
    lam_max: float | None = None

    def __post_init__(self):
        check_choice("statistic", self.statistic, STATISTICS)
        check_choice("ground_cost", self.ground_cost, GROUND_COSTS)
        if self.statistic == "squared_hinge" and self.ground_cost != "linf":
            raise ValueError("the squared-hinge statistic is an Linf-box cost: ground_cost='linf'")
        if isinstance(self.period, bool) or int(self.period) != self.period or self.period < 1:
            raise ValueError(f"period must be an integer >= 1, got {self.period}")
        for name in ("eps", "learning_rate", "initial"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.statistic != "mean_abs" and not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.lam_max is not None and not self.lam_max >= self.initial:
            raise ValueError(f"lam_max ({self.lam_max}) must be >= initial ({self.initial})")

    def init(self) -> dict[str, jax.Array]:
        return {
            LAMBDA: jnp.asarray(self.initial, jnp.float32),
            "sum": jnp.zeros((), jnp.float32),
            "count": jnp.zeros((), jnp.int32),
            "last": jnp.zeros((), jnp.float32),
        }

    def statistics(self, views: Any, values: dict[str, jax.Array]) -> jax.Array:
        """This device's batch mean of the statistic at the adversary ``views.inputs[view]``."""
        del values
        if self.view not in views.inputs:
            raise ValueError(
                f"UDRLambda reads view {self.view!r}, which no term of the defense reads; "
                f"views: {', '.join(views.inputs)}"
            )
        per_example = distance_statistic(
            views.inputs[self.view],
            views.inputs[CLEAN],
            self.statistic,
            eps=self.eps,
            tau=self.tau,
            ground_cost=self.ground_cost,
        )
        return jnp.mean(per_example).astype(jnp.float32)

    def update(self, state: dict[str, jax.Array], statistics: jax.Array) -> dict[str, jax.Array]:
        """Eq. 19 every ``period`` steps, projected onto ``[0, lam_max]`` (P4)."""
        total = state["sum"] + statistics
        count = state["count"] + 1
        due = count >= int(self.period)
        mean = total / count.astype(jnp.float32)
        stepped = state[LAMBDA] - self.learning_rate * (self.eps - mean)
        stepped = jnp.clip(stepped, 0.0, self.lam_max)
        return {
            LAMBDA: jnp.where(due, stepped, state[LAMBDA]).astype(jnp.float32),
            "sum": jnp.where(due, 0.0, total).astype(jnp.float32),
            "count": jnp.where(due, 0, count).astype(jnp.int32),
            "last": jnp.asarray(statistics, jnp.float32),
        }

    def metrics(self, state: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """``lambda`` used by this step's adversaries, and the previous step's statistic."""
        return {"udr_lambda": state[LAMBDA], "udr_statistic": state["last"]}


def udr_lambda(
    attack: UDRAttack,
    *,
    view: str = "adv",
    statistic: str = "mean_abs",
    learning_rate: float = 0.02,
    period: int = 10,
    initial: float | None = None,
    lam_max: float | None = None,
) -> UDRLambda:
    """``UDRLambda`` for ``attack``: its ``eps``, its ``tau`` (for the cost statistics), and its
    ``lam`` as ``lambda_0`` unless ``initial`` is given; the ``"soft"`` statistic uses the Linf
    ground cost whatever the attack's (App. G)."""
    return UDRLambda(
        eps=attack.eps,
        view=view,
        statistic=statistic,
        tau=attack.tau,
        learning_rate=learning_rate,
        initial=attack.lam if initial is None else initial,
        period=period,
        lam_max=lam_max,
    )


def bind_lambda(attack: Attack, lam: Any) -> tuple[Attack, bool]:
    """``(attack with lambda = lam, whether any part took it)``: ``with_lambda`` on an attack that
    has it, recursively through combinators (their ``attack`` / ``attacks`` fields)."""
    if hasattr(attack, "with_lambda"):
        return attack.with_lambda(lam), True
    if dataclasses.is_dataclass(attack) and hasattr(attack, "attack"):
        inner, bound = bind_lambda(attack.attack, lam)
        return (dataclasses.replace(attack, attack=inner), True) if bound else (attack, False)
    if dataclasses.is_dataclass(attack) and hasattr(attack, "attacks"):
        pairs = [bind_lambda(a, lam) for a in attack.attacks]
        if any(bound for _, bound in pairs):
            return dataclasses.replace(attack, attacks=tuple(a for a, _ in pairs)), True
    return attack, False


@dataclasses.dataclass(frozen=True)
class LambdaFromState:
    """``Adversary.from_state`` for UDR: the attack with ``lambda = state[key]`` (``bind_lambda``,
    through combinators); a traced scalar of the jitted step, so nothing recompiles.

        Adversary(udr(0.3, 0.01, 40), from_state=LambdaFromState())
    """

    key: str = LAMBDA

    def __call__(self, attack: Attack, state: Any) -> Attack:
        if state is None or self.key not in state:
            raise ValueError(
                f"the adversary reads {self.key!r} from the defense state, which has none: give "
                "the defense a state rule that holds it (udr_lambda)"
            )
        bound, found = bind_lambda(attack, state[self.key])
        if not found:
            raise ValueError(
                f"LambdaFromState: attack {type(attack).__name__} takes no lambda (with_lambda)"
            )
        return bound
