"""Pareto adversarial training (seed 001, Sec. 4.2, Eq. 11-12).

Upper level (Eq. 11): SGD on ``sum_i alpha_i L_i`` with ``alpha`` held constant, over the natural
loss ``L_0`` and the adversarial losses ``L_1 .. L_m`` (PGD, flow, rotation-translation).

Lower level (Eq. 12), per step, from the sliding-window moments of the batch losses::

    min_alpha  sum_{i,j} E[(alpha_i L_i - alpha_j L_j)^2]
    s.t.       sum_{i>=1} alpha_i E[L_i] = r,   sum_i alpha_i = 1,   alpha_i >= 0.

With ``S = E[L L^T]`` the objective is ``2 alpha^T (n diag(S) - S) alpha``, a convex quadratic
(it is a mean of squares). The document solved it with CVXOPT outside the graph; here it is solved
exactly inside the jitted step by enumerating the active sets (``solve_lower_level``): for every
support ``F`` (``2^n - 1`` of them, 15 for four losses) the equality-constrained problem on ``F`` is
one small KKT linear system; the answer is the feasible candidate of least objective. A vertex of
the set of minimisers is the unique minimiser on its own support, so the enumeration is exact also
when the quadratic is singular (equal losses, a zero loss).

``r`` is feasible iff ``0 <= r <= max_{i>=1} E[L_i]`` (the losses are non-negative and ``alpha_0``
takes the rest of the simplex). Outside that range the rule is: use the nearest feasible ``r``
(clip), and count the steps where it fired (``pareto_r_clipped_steps`` in the state and metrics).

The window (``ParetoWindow``, the defense state) keeps the last ``W`` global batch means of each
loss; ``E[L_i]`` and ``E[L_i L_j]`` are means over the filled part of the window. The weights of
step ``t`` come from the window of steps ``< t`` (the state before the step's update); before any
step has been seen they are uniform, ``1 / n`` (our choice: the document does not say).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from advjax.attacks import Attack
from advjax.defenses.core import CLEAN, Adversary, Defense, FromState
from advjax.defenses.terms import CrossEntropy

NATURAL = "clean_ce"


class LowerLevelSolution(NamedTuple):
    """``alpha`` of Eq. 12, the ``r`` it meets and whether ``r`` had to be clipped."""

    alpha: jax.Array
    r: jax.Array
    clipped: jax.Array


def lower_level_objective(alpha: jax.Array, second: jax.Array) -> jax.Array:
    """``sum_{i,j} E[(alpha_i L_i - alpha_j L_j)^2] = 2 alpha^T (n diag(S) - S) alpha``."""
    n = second.shape[-1]
    hessian = n * jnp.diag(jnp.diagonal(second)) - second
    return 2.0 * alpha @ hessian @ alpha


def feasible_r_range(mean: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``[0, max_{i>=1} E[L_i]]``: the ``r`` that some ``alpha`` on the simplex meets."""
    return jnp.zeros((), mean.dtype), jnp.max(mean[1:])


def _supports(n: int) -> np.ndarray:
    """Every non-empty subset of ``range(n)`` as a boolean mask, ``[2^n - 1, n]``."""
    masks = [bits for bits in itertools.product((False, True), repeat=n) if any(bits)]
    return np.asarray(masks, dtype=bool)


def solve_lower_level(mean: jax.Array, second: jax.Array, r: Any) -> LowerLevelSolution:
    """The exact minimiser of Eq. 12 for the moments ``mean = E[L]`` ``[n]`` and
    ``second = E[L L^T]`` ``[n, n]`` (``L_0`` the natural loss), by active-set enumeration.

    ``r`` outside ``feasible_r_range(mean)`` is replaced by the nearest feasible value
    (``clipped``). Works in the dtype of the moments (float64 under ``jax.enable_x64``).
    """
    mean = jnp.asarray(mean)
    dtype = mean.dtype
    second = jnp.asarray(second, dtype)
    n = mean.shape[0]
    low, high = feasible_r_range(mean)
    r = jnp.asarray(r, dtype)
    r_used = jnp.clip(r, low, high)
    clipped = r_used != r

    hessian = n * jnp.diag(jnp.diagonal(second)) - second
    hessian = 0.5 * (hessian + hessian.T)
    constraints = jnp.stack([mean.at[0].set(0.0), jnp.ones(n, dtype)])  # A alpha = b
    rhs = jnp.stack([r_used, jnp.ones((), dtype)])
    scale = jnp.maximum(jnp.max(jnp.abs(hessian)), jnp.max(jnp.abs(constraints)))
    tol = 1e3 * jnp.finfo(dtype).eps * jnp.maximum(scale, 1.0)

    def candidate(support):
        # KKT of min a^T H a s.t. A a = b, a_i = 0 off the support: inactive variables get the
        # row a_i = 0 and leave the constraints.
        s = support.astype(dtype)
        h = 2.0 * hessian * s[:, None] * s[None, :] + jnp.diag(1.0 - s)
        a = constraints * s[None, :]
        kkt = jnp.block([[h, a.T], [a, jnp.zeros((2, 2), dtype)]])
        solution = jnp.linalg.pinv(kkt) @ jnp.concatenate([jnp.zeros(n, dtype), rhs])
        alpha = solution[:n] * s
        residual = jnp.max(jnp.abs(constraints @ alpha - rhs))
        valid = (residual <= tol) & jnp.all(alpha >= -tol)
        return alpha, valid, alpha @ hessian @ alpha

    alphas, valid, objective = jax.vmap(candidate)(jnp.asarray(_supports(n)))
    best = jnp.argmin(jnp.where(valid, objective, jnp.inf))
    alpha = jnp.clip(alphas[best], 0.0, None)
    alpha = alpha / jnp.sum(alpha)
    return LowerLevelSolution(alpha=alpha, r=r_used, clipped=clipped)


@dataclasses.dataclass(frozen=True)
class ParetoWindow:
    """Defense state of Pareto AT: a sliding window of the last ``window`` batch means of the
    losses ``terms`` (``terms[0]`` the natural loss), and the weights solved from it.

    State: ``losses`` ``[window, n]``, ``filled`` (rows in use), ``position`` (next row to write),
    ``weights`` ``[n]`` (for the next step), ``r`` (the ``r`` met by ``weights``) and
    ``r_clipped_steps`` (how often ``r`` was infeasible and clipped).
    """

    terms: tuple[str, ...]
    r: float
    window: int

    def __post_init__(self):
        if int(self.window) != self.window or self.window < 1:
            raise ValueError(f"window must be a positive integer, got {self.window}")
        if len(self.terms) < 2:
            raise ValueError(f"Pareto AT needs the natural loss and >= 1 other, got {self.terms}")
        if not self.r >= 0:
            raise ValueError(f"r must be >= 0, got {self.r}")

    def init(self) -> dict[str, jax.Array]:
        n = len(self.terms)
        return {
            "losses": jnp.zeros((int(self.window), n), jnp.float32),
            "filled": jnp.zeros((), jnp.int32),
            "position": jnp.zeros((), jnp.int32),
            "weights": jnp.full((n,), 1.0 / n, jnp.float32),
            "r": jnp.asarray(self.r, jnp.float32),
            "r_clipped_steps": jnp.zeros((), jnp.int32),
        }

    def statistics(self, views: Any, values: dict[str, jax.Array]) -> jax.Array:
        del views
        missing = [name for name in self.terms if name not in values]
        if missing:
            raise ValueError(f"ParetoWindow of unknown terms {missing}; terms: {sorted(values)}")
        return jnp.stack([values[name] for name in self.terms]).astype(jnp.float32)

    def update(self, state: dict[str, jax.Array], statistics: jax.Array) -> dict[str, jax.Array]:
        losses = state["losses"].at[state["position"]].set(statistics)
        filled = jnp.minimum(state["filled"] + 1, int(self.window))
        mean, second = window_moments(losses, filled)
        solution = solve_lower_level(mean, second, self.r)
        return {
            "losses": losses,
            "filled": filled,
            "position": (state["position"] + 1) % int(self.window),
            "weights": solution.alpha.astype(jnp.float32),
            "r": solution.r.astype(jnp.float32),
            "r_clipped_steps": state["r_clipped_steps"] + solution.clipped.astype(jnp.int32),
        }

    def metrics(self, state: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """The moments and ``r`` behind this step's weights (the weights themselves are logged as
        ``{term}_weight``)."""
        mean, second = window_moments(state["losses"], state["filled"])
        out = {"pareto_r": state["r"], "pareto_r_clipped_steps": state["r_clipped_steps"]}
        for i, a in enumerate(self.terms):
            out[f"pareto_mean_{a}"] = mean[i]
            for j in range(i, len(self.terms)):
                out[f"pareto_second_{a}_{self.terms[j]}"] = second[i, j]
        return out


def window_moments(losses: jax.Array, filled: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``E[L]`` ``[n]`` and ``E[L L^T]`` ``[n, n]`` over the first ``filled`` rows of the window
    (zeros while it is empty)."""
    rows = (jnp.arange(losses.shape[0]) < filled).astype(losses.dtype)[:, None]
    count = jnp.maximum(filled, 1).astype(losses.dtype)
    kept = losses * rows
    return jnp.sum(kept, 0) / count, kept.T @ kept / count


def pareto_at(
    attacks: Mapping[str, Attack], r: float = 1.0, window: int = 50, eps_warmup_steps: int = 0
) -> Defense:
    """Pareto AT (seed 001 Eq. 11-12): ``alpha_0 CE(f(x), y) + sum_a alpha_a CE(f(x'_a), y)``
    with ``alpha`` solved every step from the last ``window`` batches' loss moments.

    ``attacks``: the named adversaries in order (``{"pgd": ..., "flow": ..., "rt": ...}``);
    ``r``: the required expected robust loss (Eq. 12; larger ``r`` weighs the adversarial losses
    more); ``window``: the sliding window in steps (our choice: the document does not give it).
    """
    if not attacks:
        raise ValueError("Pareto AT needs at least one adversary")
    adversaries = tuple(Adversary(attack, name=name) for name, attack in attacks.items())
    names = (NATURAL, *(f"{a.name}_ce" for a in adversaries))
    terms = (
        CrossEntropy(CLEAN, weight=FromState("weights", index=0), name=NATURAL),
        *(
            CrossEntropy(a.name, weight=FromState("weights", index=i + 1), name=names[i + 1])
            for i, a in enumerate(adversaries)
        ),
    )
    rule = ParetoWindow(names, float(r), int(window))
    return Defense(terms, adversaries, (), eps_warmup_steps, state_rule=rule, name="pareto_at")
