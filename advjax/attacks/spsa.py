"""SPSA (Uesato et al., ICML 2018, "Adversarial Risk and the Dangers of Evaluating Against Weak
Attacks", Sec. 3.1 and Alg. 1): a gradient-free Linf attack.

Only forward passes of the model are used (its logits, through the loss). Per example::

    delta_0 ~ U[-eps, eps]^D, projected          (random start; the clean x is a candidate too)
    for t in range(steps):
        v_1 .. v_n ~ Rademacher({-1, +1}^D)      (antithetic pairs x_t ± δ v_i: 2n queries)
        g_t = 1/n sum_i (L(x_t + δ v_i) - L(x_t - δ v_i)) / (2δ) v_i     (the SPSA estimate)
        delta_{t+1} = Proj_{B_inf(eps) ∩ [0,1] - x}(Adam(delta_t, g_t))   (Adam descends L)
        x_{t+1} = x + delta_{t+1}; one query there: keep the best iterate, stop once adversarial

``L`` is minimised: the margin ``z_y - max_{k != y} z_k`` (``loss="margin"``, the paper's and
cleverhans'), or minus the cross-entropy (``loss="ce"``); targeted: ``max_{k != t} z_k - z_t`` (or
the cross-entropy to the target ``t = y``). ``AttackResult.loss`` is ``-L`` at ``x_adv`` (advjax's
maximised convention: ``losses.margin``).

Fixed shapes: every example draws its own directions from its own key (per-example keys make an
example's run independent of its batch) and stops (masked) once adversarial
(``early_stop=True``); the step loop is a ``lax.while_loop`` that exits when every example has
stopped. The estimate averages ``num_batches`` independent batches of ``num_samples`` directions
(cleverhans' ``spsa_iters``), evaluated one batch at a time: one model call on
``B x 2 num_samples`` points, so ``num_samples`` bounds the memory and ``num_batches`` adds
directions.

Defaults are those of cleverhans' ``spsa`` (``cleverhans/torch/attacks/spsa.py``): ``delta =
0.01``, Adam with learning rate (``step_size``) 0.01, 128 directions (``spsa_samples``, each
evaluated at ``±δ``) in one batch (``spsa_iters = 1``), margin loss, uniform random start. The
number of steps has no default there (``nb_iter``); 100 here (the thesis's evaluation runs 50:
``spec/thesis_ch4.md``, A.10).

Deviations from cleverhans (documented, deliberate):

* The estimate is taken at the current iterate ``x + delta_t``. cleverhans' PyTorch version passes
  the clean ``x`` where the perturbation belongs and evaluates the model at ``2x + δ v`` at every
  step (cleverhans issue #1249, open), so its estimate never moves with the iterate; its
  TensorFlow version multiplies by ``δ v`` instead of ``v`` (issue #1087), which Adam mostly
  absorbs. The paper's algorithm is the one above.
* ``num_samples`` counts directions (2 queries each), as cleverhans' PyTorch ``spsa_samples``;
  cleverhans' TensorFlow ``spsa_samples`` counts queries (``spsa_samples / 2`` directions).
* The best iterate (success first, then the objective) is returned; cleverhans returns the last
  one. Examples stop once adversarial (cleverhans: optional ``early_stop_loss_threshold`` on the
  batch loss, off by default).
* The query points ``x_t ± δ v`` are not clipped to the box (as in cleverhans): the model is
  queried up to ``δ`` outside ``[0, 1]``; every iterate and ``x_adv`` are inside it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from advjax import losses
from advjax.attacks.base import (
    AttackResult,
    ModelFn,
    QueryAttack,
    better,
    check_nonnegative,
    is_label_vector,
    success,
    validated,
)
from advjax.attacks.minimum_norm import check_int, per_example
from advjax.attacks.random_bits import INIT_SALT, random_signs, restart_seed, step_bits

SPSA_LOSSES = ("margin", "ce")


def spsa_gradient(
    loss_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    seeds: jax.Array,
    *,
    delta: float,
    num_samples: int,
    counter: jax.Array | int = 0,
) -> jax.Array:
    """The SPSA estimate of the gradient of a per-example loss at a batch ``x`` ``[B, ...]``:

        g = 1/n sum_{i=1}^n (L(x + δ v_i) - L(x - δ v_i)) / (2δ) v_i,   v_i ~ Rademacher

    (Spall 1992; Uesato et al. 2018, Alg. 1), an unbiased estimate of the gradient of ``L``
    smoothed over the cube of side ``2δ`` (``E[v v^T] = I``). ``loss_fn`` maps a stack of ``S``
    batches ``[S, B, ...]`` to the losses ``[S, B]``; it is called once, on the ``2n``
    antithetic points of every example. ``seeds`` ``[B, 2]`` (uint32, e.g.
    ``jax.random.bits(key, (B, 2))``) and ``counter`` select the directions: example ``b``'s
    depend on ``seeds[b]`` and ``counter`` only (the Square attack's counter-based hash streams,
    which keep threefry's slow compilation out of the attack's loop).
    """
    size = num_samples * math.prod(x.shape[1:])
    counter = jnp.asarray(counter).astype(jnp.uint32)
    words = jax.vmap(lambda s: step_bits(restart_seed(s, counter), 0, size))(seeds)
    v = random_signs(words, x.dtype).reshape(x.shape[0], num_samples, *x.shape[1:])
    v = jnp.moveaxis(v, 1, 0)  # [n, B, ...]
    values = loss_fn(jnp.concatenate([x + delta * v, x - delta * v]))  # [2n, B]
    diff = (values[:num_samples] - values[num_samples:]).astype(x.dtype)
    return jnp.einsum("nb,nb...->b...", diff, v) / (2.0 * delta * num_samples)


@dataclasses.dataclass(frozen=True)
class SPSA(QueryAttack):
    """SPSA with Adam, Linf (see the module docstring).

    Attributes:
      eps: Linf radius.
      step_size: Adam's learning rate (cleverhans' ``learning_rate``).
      steps: Adam steps (one gradient estimate each).
      delta: the finite-difference size ``δ`` of the estimate.
      num_samples: Rademacher directions per batch of the estimate (``2 num_samples`` queries).
      num_batches: batches of directions averaged per estimate (cleverhans' ``spsa_iters``).
      loss: "margin" or "ce".
      targeted: reach the class ``y`` instead of leaving it.
      random_init: start from a uniform point of the ball (cleverhans) instead of ``x``.
      early_stop: stop an example once it is adversarial.
    """

    eps: float
    step_size: float
    steps: int
    delta: float
    num_samples: int
    num_batches: int
    loss: str
    targeted: bool
    random_init: bool
    early_stop: bool

    def __post_init__(self):
        check_nonnegative(eps=self.eps, step_size=self.step_size)
        check_int("steps", self.steps, 1)
        check_int("num_samples", self.num_samples, 1)
        check_int("num_batches", self.num_batches, 1)
        if not self.delta > 0:
            raise ValueError(f"delta must be > 0, got {self.delta}")
        if self.loss not in SPSA_LOSSES:
            raise ValueError(
                f"unknown loss {self.loss!r} for SPSA; valid losses: {', '.join(SPSA_LOSSES)}"
            )

    def scaled(self, factor: Any) -> SPSA:
        return dataclasses.replace(self, eps=self.eps * factor, step_size=self.step_size * factor)

    @validated
    def run_with_queries(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> tuple[AttackResult, jax.Array]:
        """``run`` plus the per-example number of model queries (int32 ``[B]``): the clean point,
        the start, then ``2 num_samples num_batches + 1`` per step until the example stops."""
        if not is_label_vector(y):
            raise ValueError(
                "SPSA needs integer labels y of shape [batch] (target labels when targeted), "
                f"got {getattr(y, 'shape', type(y).__name__)}"
            )
        batch = x.shape[0]
        x = jax.lax.stop_gradient(x)
        # Two seed words per example (one threefry call); the start and every direction come
        # from counter-based streams of them.
        if key.ndim == 0:
            seeds = jax.random.bits(key, (batch, 2))
        else:
            seeds = jax.vmap(lambda k: jax.random.bits(k, (2,)))(key)
        loss_fn = losses.get_loss(self.loss)
        sign = -1.0 if self.targeted else 1.0

        def evaluate(points):  # [S, B, ...] -> objective [S, B], success [S, B]
            logits = model_fn(variables, points.reshape(-1, *x.shape[1:]))
            labels = jnp.tile(y, points.shape[0])
            score = sign * loss_fn(logits, labels)
            ok = success(logits, labels, self.targeted)
            return score.reshape(points.shape[:2]), ok.reshape(points.shape[:2])

        def project(x_adv):
            return jnp.clip(jnp.clip(x_adv, x - self.eps, x + self.eps), 0.0, 1.0)

        def estimate(x_adv, i):
            def one_batch(total, j):
                g = spsa_gradient(
                    lambda p: -evaluate(p)[0],
                    x_adv,
                    seeds,
                    delta=self.delta,
                    num_samples=self.num_samples,
                    counter=i * self.num_batches + j,
                )
                return total + g, None

            total, _ = jax.lax.scan(one_batch, jnp.zeros_like(x), jnp.arange(self.num_batches))
            return total / self.num_batches

        score, ok = evaluate(x[None])
        best = (x, score[0], ok[0])
        if self.random_init:
            size = math.prod(x.shape[1:])
            words = jax.vmap(lambda s: step_bits(s, 0, size))(
                seeds ^ jnp.asarray(INIT_SALT, jnp.uint32)
            )
            unit = (words >> 8).astype(x.dtype) * 2.0**-24  # uniform in [0, 1)
            x0 = project(x + self.eps * (2.0 * unit.reshape(x.shape) - 1.0))
            score, ok = evaluate(x0[None])
            take = better(ok[0], score[0], best[2], best[1])
            best = (
                jnp.where(per_example(take, x), x0, best[0]),
                jnp.where(take, score[0], best[1]),
                jnp.where(take, ok[0], best[2]),
            )
        else:
            x0 = x
        queries = jnp.full(batch, 2 if self.random_init else 1, jnp.int32)
        per_step = 2 * self.num_samples * self.num_batches + 1
        optimizer = optax.adam(self.step_size)
        done = best[2] if self.early_stop else jnp.zeros(batch, bool)

        def cond(state):
            i, *_, done, _ = state
            return (i < self.steps) & jnp.any(~done)

        def body(state):
            i, x_adv, opt_state, best, done, queries = state
            active = ~done
            grad = estimate(x_adv, i)
            updates, opt_state = optimizer.update(grad, opt_state, x_adv)
            new_x = project(optax.apply_updates(x_adv, updates))
            score, ok = evaluate(new_x[None])
            score, ok = score[0], ok[0]
            take = active & better(ok, score, best[2], best[1])
            best = (
                jnp.where(per_example(take, x), new_x, best[0]),
                jnp.where(take, score, best[1]),
                jnp.where(take, ok, best[2]),
            )
            # Stopped examples keep their iterate (their Adam moments no longer matter).
            x_adv = jnp.where(per_example(active, x), new_x, x_adv)
            queries = queries + per_step * active.astype(jnp.int32)
            if self.early_stop:
                done = done | best[2]
            return i + 1, x_adv, opt_state, best, done, queries

        state = (jnp.asarray(0), x0, optimizer.init(x0), best, done, queries)
        _, _, _, best, _, queries = jax.lax.while_loop(cond, body, state)
        result = AttackResult(x_adv=best[0], loss=best[1], success=best[2])
        return result, queries


def spsa(
    eps: float,
    step_size: float = 0.01,
    steps: int = 100,
    *,
    delta: float = 0.01,
    num_samples: int = 128,
    num_batches: int = 1,
    loss: str = "margin",
    targeted: bool = False,
    random_init: bool = True,
    early_stop: bool = True,
) -> SPSA:
    """SPSA (Uesato et al. 2018), gradient-free Linf: cleverhans' defaults (Adam step 0.01,
    ``delta = 0.01``, 128 antithetic Rademacher directions per step, margin loss), 100 steps;
    targeted: ``y`` are the targets. ``attack.run_with_queries(...)`` also returns the
    per-example number of queries."""
    return SPSA(
        eps=eps,
        step_size=step_size,
        steps=steps,
        delta=delta,
        num_samples=num_samples,
        num_batches=num_batches,
        loss=loss,
        targeted=targeted,
        random_init=random_init,
        early_stop=early_stop,
    )
