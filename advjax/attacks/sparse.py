"""Sparse (L0) evaluation attacks: JSMA and the point-wise attack.

* **JSMA** (Papernot et al. 2016, "The Limitations of Deep Learning in Adversarial Settings",
  the crafting loop with the pairwise saliency map, Algorithm 3 / eqs. 8-10): a targeted white-box
  attack that, at each iteration, picks the pair of input features ``(p, q)`` with the largest
  ``alpha * |beta|`` subject to ``alpha > 0, beta < 0`` (for ``theta > 0``), where
  ``alpha = sum_{i in {p,q}} dz_t/dx_i`` and ``beta = sum_{i in {p,q}} sum_{j != t} dz_j/dx_i``,
  and moves both by ``theta`` (the factory's ``step_size``; clipped to [0, 1]). At most
  ``floor(gamma * n / 2)`` iterations, so at most ``gamma * n`` of the ``n = H * W * C`` features
  change.
* **Point-wise** (Schott et al. ICLR 2019, "Towards the first adversarially robust neural network
  model on MNIST"; foolbox's ``PointwiseAttack``): a decision-based L0 attack. Start from
  an adversarial noise image (salt-and-pepper of increasing density, or uniform noise blended in
  with increasing weight), then repeatedly visit the features in a random order and reset each to
  its clean value when the image stays adversarial, until a whole pass resets nothing. Optionally
  (``refine_steps``) foolbox's second stage: per feature, a binary search between the adversarial
  and the clean value for the closest value that stays adversarial (reduces L2, not L0, mostly).

SRT (seeds/004, Table 4 and App. E) evaluates with both, "implemented based on Advertorch and
Foolbox", and reports adversarial *accuracy* without further settings. The defaults follow the
common toolkits: JSMA ``theta = 1``, ``gamma = 0.1`` (cleverhans and torchattacks defaults;
Papernot et al. used a 14.5% budget on MNIST); the point-wise attack's accuracy counts every point
for which an adversarial is found (``eps=None``), with an optional L0 budget ``eps``.

Shapes are fixed: iterations run in ``lax.while_loop`` (static caps, early exit once no example of
the batch can change) and ``lax.scan``; finished examples are masked, so with per-example keys an
example's result does not depend on its batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advjax import losses
from advjax.attacks.base import (
    Attack,
    AttackResult,
    ModelFn,
    is_label_vector,
    per_example_keys,
    validated,
)

TARGET_MODES = ("second", "least", "random", "next")
INITS = ("salt_and_pepper", "uniform")


def _check_labels(y: Any, attack: str) -> None:
    if not is_label_vector(y):
        raise ValueError(
            f"{attack} takes integer labels y of shape [B], got "
            f"{type(y).__name__} {getattr(y, 'shape', '')} {getattr(y, 'dtype', '')}"
        )


def _check_count(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")


def _flat(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def l0_norm(x_adv: jax.Array, x: jax.Array) -> jax.Array:
    """Number of changed features (``H * W * C`` entries) per example, ``[B]`` int32."""
    return jnp.sum(_flat(x_adv) != _flat(x), axis=1).astype(jnp.int32)


def choose_targets(logits: jax.Array, labels: jax.Array, mode: str, key: jax.Array) -> jax.Array:
    """Target classes for an untargeted run of a targeted attack, ``[B]`` int32.

    ``"second"``: the most likely wrong class at the clean point (the second most likely class of a
    correctly classified example; foolbox 2's ``SaliencyMapAttack`` likewise targets the class a
    gradient attack reaches first); ``"least"``: the least likely class; ``"random"``: uniform over
    the wrong classes (per-example keys ``[B]`` or one key); ``"next"``: ``(y + 1) mod K``
    (torchattacks' JSMA).
    """
    num_classes = logits.shape[-1]
    labels = labels.astype(jnp.int32)
    onehot = jax.nn.one_hot(labels, num_classes, dtype=bool)
    if mode == "second":
        return jnp.argmax(jnp.where(onehot, -jnp.inf, logits), axis=-1).astype(jnp.int32)
    if mode == "least":
        return jnp.argmin(jnp.where(onehot, jnp.inf, logits), axis=-1).astype(jnp.int32)
    if mode == "next":
        return (labels + 1) % num_classes
    if mode == "random":
        if key.ndim == 1:
            r = jax.vmap(lambda k: jax.random.randint(k, (), 0, num_classes - 1))(key)
        else:
            r = jax.random.randint(key, labels.shape, 0, num_classes - 1)
        return (r + (r >= labels)).astype(jnp.int32)
    raise ValueError(f"unknown target mode {mode!r}; valid modes: {', '.join(TARGET_MODES)}")


def best_pair(
    grad_target: jax.Array,
    grad_others: jax.Array,
    domain: jax.Array,
    increase: bool,
    chunk_elements: int = 2**18,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Papernot et al.'s pairwise saliency map (Alg. 3): the best admissible feature pair.

    For features ``p != q`` both in ``domain`` (``[B, n]`` bool), with ``a = g_t[p] + g_t[q]`` and
    ``b = g_o[p] + g_o[q]``, a pair is admissible when ``a > 0`` and ``b < 0`` (``a < 0, b > 0``
    when decreasing); its score is ``-a * b = |a| |b|``. Returns ``(p, q, found)``, each ``[B]``;
    ties go to the first pair in row-major order (``p < q``), as ``argmax`` over the flattened
    ``n x n`` map. The map is scanned in row blocks of ``~chunk_elements`` entries per example.
    """
    batch, n = grad_target.shape
    rows = max(1, min(n, chunk_elements // n))
    num_chunks = -(-n // rows)
    pad = num_chunks * rows - n

    def blocks(a, fill):
        a = jnp.pad(a, ((0, 0), (0, pad)), constant_values=fill)
        return a.reshape(batch, num_chunks, rows).transpose(1, 0, 2)

    cols = jnp.arange(n)

    def chunk(best, inputs):
        best_score, best_index = best
        gt, go, dom, start = inputs  # [B, R] each, scalar start
        a = gt[:, :, None] + grad_target[:, None, :]
        b = go[:, :, None] + grad_others[:, None, :]
        distinct = (start + jnp.arange(rows))[:, None] != cols[None, :]
        ok = dom[:, :, None] & domain[:, None, :] & distinct[None]
        ok &= ((a > 0) & (b < 0)) if increase else ((a < 0) & (b > 0))
        score = jnp.where(ok, -a * b, -jnp.inf).reshape(batch, rows * n)
        index = jnp.argmax(score, axis=1)
        value = jnp.take_along_axis(score, index[:, None], axis=1)[:, 0]
        take = value > best_score
        return (
            jnp.where(take, value, best_score),
            jnp.where(take, start * n + index, best_index),
        ), None

    first = grad_target[:, 0]  # *_like keeps the operands' sharding type (shard_map carries)
    init = (jnp.full_like(first, -jnp.inf), jnp.zeros_like(first, dtype=jnp.int32))
    starts = jnp.arange(num_chunks, dtype=jnp.int32) * rows
    inputs = (blocks(grad_target, 0.0), blocks(grad_others, 0.0), blocks(domain, False), starts)
    (score, index), _ = jax.lax.scan(chunk, init, inputs)
    return index // n, index % n, score > -jnp.inf


@dataclasses.dataclass(frozen=True)
class JSMA(Attack):
    """Jacobian-based saliency map attack (Papernot et al. 2016; pairwise map, Alg. 3, eqs. 8-10).

    Targeted when ``targeted`` (``y`` are the targets; success: predicted as the target). Otherwise
    ``y`` are labels, the target comes from ``target`` (``choose_targets``) and an example is
    finished (and successful) as soon as it is misclassified, into any class (the untargeted
    evaluation of foolbox 2; cleverhans and torchattacks run to the target).

    The forward derivatives are those of the logits (cleverhans, advertorch); ``beta`` sums those
    of all non-target classes, computed with two vector-Jacobian products. Features that reached
    the bound ``theta`` moves them to (1 for ``theta > 0``, 0 otherwise) leave the search domain.

    Attributes:
      step_size: the paper's ``theta``, the change per selected feature (``+1``: set to the
        maximum); ``0 < |step_size| <= 1``.
      gamma: maximum fraction of the ``H * W * C`` features changed; ``0 < gamma <= 1``.
      targeted: ``y`` are target classes.
      target: untargeted runs' target class, one of ``TARGET_MODES``.
      chunk_elements: pair-map entries per example computed at once (memory bound).
    """

    step_size: float
    gamma: float
    targeted: bool
    target: str
    chunk_elements: int

    def __post_init__(self):
        if not (0 < abs(self.step_size) <= 1):
            raise ValueError(f"step_size must satisfy 0 < |step_size| <= 1, got {self.step_size}")
        if not (0 < self.gamma <= 1):
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.target not in TARGET_MODES:
            raise ValueError(
                f"unknown target mode {self.target!r}; valid modes: {', '.join(TARGET_MODES)}"
            )
        _check_count("chunk_elements", self.chunk_elements, 1)

    def max_iterations(self, num_features: int) -> int:
        """``floor(gamma * n / 2)``: two features per iteration, at most ``gamma * n`` changed."""
        return int(math.floor(self.gamma * num_features / 2 + 1e-9))

    @validated
    def run(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> AttackResult:
        _check_labels(y, "JSMA")
        x = jax.lax.stop_gradient(x)
        n = int(np.prod(x.shape[1:]))
        increase = self.step_size > 0

        def forward(z):
            return model_fn(variables, z)

        clean_logits = forward(x)
        num_classes = clean_logits.shape[-1]
        if self.targeted:
            targets = y.astype(jnp.int32)
        else:
            targets = choose_targets(clean_logits, y, self.target, key)

        def reached(logits):
            pred = jnp.argmax(logits, axis=-1)
            return pred == targets if self.targeted else pred != y

        def body(carry):
            x_adv, active, it = carry
            logits, vjp = jax.vjp(forward, x_adv)
            onehot = jax.nn.one_hot(targets, num_classes, dtype=logits.dtype)
            cotangents = jnp.stack([onehot, jnp.ones_like(logits)])
            (grads,) = jax.vmap(vjp)(cotangents)  # [2, B, H, W, C]
            grad_target = _flat(grads[0])
            grad_others = _flat(grads[1]) - grad_target
            flat = _flat(x_adv)
            domain = flat < 1.0 if increase else flat > 0.0
            p, q, found = best_pair(grad_target, grad_others, domain, increase, self.chunk_elements)
            active = active & ~reached(logits) & found
            step = jax.nn.one_hot(p, n, dtype=flat.dtype) + jax.nn.one_hot(q, n, dtype=flat.dtype)
            step = self.step_size * step * active[:, None].astype(flat.dtype)
            x_next = jnp.clip(flat + step, 0.0, 1.0).reshape(x.shape)
            return x_next, active, it + 1

        def cond(carry):
            _, active, it = carry
            return (it < self.max_iterations(n)) & jnp.any(active)

        active = jnp.full_like(x[:, 0, 0, 0], True, dtype=bool)
        x_adv, _, _ = jax.lax.while_loop(cond, body, (x, active, jnp.int32(0)))
        logits = forward(x_adv)
        ok = reached(logits)
        loss = -losses.margin(logits, targets) if self.targeted else losses.margin(logits, y)
        return AttackResult(x_adv=x_adv, loss=loss, success=ok)


def jsma(
    step_size: float = 1.0,
    gamma: float = 0.1,
    *,
    targeted: bool = False,
    target: str = "second",
    chunk_elements: int = 2**18,
) -> JSMA:
    """JSMA (Papernot et al. 2016): pairs of features set to the maximum (``step_size = theta =
    +1``), at most ``gamma = 10%`` of them changed (cleverhans/torchattacks defaults). Untargeted
    by default: the target is the most likely wrong class and any misclassification counts;
    ``targeted=True``: ``y`` are the targets."""
    return JSMA(
        step_size=step_size,
        gamma=gamma,
        targeted=targeted,
        target=target,
        chunk_elements=chunk_elements,
    )


@dataclasses.dataclass(frozen=True)
class Pointwise(Attack):
    """Point-wise attack (Schott et al. ICLR 2019; foolbox ``PointwiseAttack``), decision-based.

    Uses only the predicted class ``argmax model_fn(variables, x')``; ``y`` are labels and a point
    is adversarial when it is misclassified.

    1. Initialisation: noise levels ``p = k / init_steps``, ``k = 1..init_steps``, each with fresh
       noise; the first adversarial one is the start (``"salt_and_pepper"``: each pixel, all
       channels at once, set to 0 with probability ``p / 2`` and to 1 with probability ``p / 2``,
       as foolbox's ``SaltAndPepperNoiseAttack``; ``"uniform"``: ``(1 - p) x + p u``,
       ``u ~ U[0, 1]``). A misclassified ``x`` is its own adversarial (L0 = 0).
    2. Passes: each visits all ``H * W * C`` features in a fresh random order per example and resets
       a feature to its clean value when the image stays adversarial; passes repeat until one
       resets nothing (a 1-minimal adversarial: no single changed feature can be reset), at most
       ``steps``. (Foolbox draws a new order after every successful reset; the stopping
       criterion, a full pass without a reset, is the same.)
    3. ``refine_steps`` passes of foolbox's binary search per changed feature
       (``binary_search_steps`` halvings between the adversarial and the clean value).

    ``success`` is adversarial and, when ``eps`` is set, at most ``eps`` changed features.
    ``x_adv`` is the adversarial point when successful and ``x`` otherwise, so the evaluation suite
    (which re-checks the prediction at ``x_adv``) respects the L0 budget. ``loss`` is ``-L0`` for
    successes (restarts keep the sparsest) and ``-inf`` otherwise; ``l0_norm(x_adv, x)`` gives
    the distances (e.g. the median L0 of Schott et al.).

    Attributes:
      eps: L0 budget (number of changed features), ``None`` for unbounded; may be traced.
      steps: cap on the reset passes.
      init: ``"salt_and_pepper"`` or ``"uniform"``.
      init_steps: noise levels tried for the starting point.
      refine_steps: binary-search passes (0 disables).
      binary_search_steps: halvings per feature in a refine pass.
    """

    eps: float | None
    steps: int
    init: str
    init_steps: int
    refine_steps: int
    binary_search_steps: int

    def __post_init__(self):
        traced = isinstance(self.eps, jax.core.Tracer)  # e.g. a budget sweep inside one jit
        if self.eps is not None and not traced and not self.eps >= 0:
            raise ValueError(f"eps (an L0 budget) must be None or >= 0, got {self.eps}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; valid inits: {', '.join(INITS)}")
        _check_count("init_steps", self.init_steps, 1)
        _check_count("steps", self.steps, 0)
        _check_count("refine_steps", self.refine_steps, 0)
        _check_count("binary_search_steps", self.binary_search_steps, 1)

    def _noisy(self, x: jax.Array, level: jax.Array, keys: jax.Array) -> jax.Array:
        def one(xi, k):
            if self.init == "salt_and_pepper":
                u = jax.random.uniform(k, xi.shape[:-1] + (1,), dtype=xi.dtype)
                salted = jnp.where(u >= 1 - level / 2, 1.0, xi)
                return jnp.where(u < level / 2, 0.0, salted).astype(xi.dtype)
            u = jax.random.uniform(k, xi.shape, dtype=xi.dtype)
            return jnp.clip((1 - level) * xi + level * u, 0.0, 1.0)

        return jax.vmap(one)(x, keys)

    @validated
    def run(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> AttackResult:
        return self.run_with_history(model_fn, variables, x, y, key)[0]

    @validated
    def run_with_history(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> tuple[AttackResult, jax.Array]:
        """``run`` plus the L0 distance after the start and after each reset pass.

        The history is ``[steps + 1, B]`` int32 (rows past the last pass run repeat the
        final value; 0 for examples without an adversarial start).
        """
        _check_labels(y, "the point-wise attack")
        x = jax.lax.stop_gradient(x)
        shape = x.shape
        n = int(np.prod(shape[1:]))
        keys = per_example_keys(key, shape[0])
        k_init, k_pass, k_refine = jax.vmap(lambda k: jax.random.split(k, 3), out_axes=1)(keys)
        xf = _flat(x)

        def adversarial(z_flat):  # decision-based: the predicted class only
            pred = jnp.argmax(model_fn(variables, z_flat.reshape(shape)), axis=-1)
            return jax.lax.stop_gradient(pred != y)

        # 1. Increasing noise until adversarial.
        def init_body(carry):
            start, found, k = carry
            level = (k + 1).astype(x.dtype) / self.init_steps
            step_keys = jax.vmap(jax.random.fold_in, (0, None))(k_init, k)
            candidate = _flat(self._noisy(x, level, step_keys))
            take = adversarial(candidate) & ~found
            return jnp.where(take[:, None], candidate, start), found | take, k + 1

        def init_cond(carry):
            _, found, k = carry
            return (k < self.init_steps) & ~jnp.all(found)

        start, found, _ = jax.lax.while_loop(
            init_cond, init_body, (xf, adversarial(xf), jnp.int32(0))
        )

        rows = jnp.arange(shape[0])

        def permutations(pass_keys, index):
            return jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, index), n))(
                pass_keys
            )

        def set_feature(z, idx, value):
            return z.at[rows, idx].set(value)

        # 2. Reset passes.
        def reset_visit(z, idx):
            original = xf[rows, idx]
            candidate = set_feature(z, idx, original)
            accept = (z[rows, idx] != original) & adversarial(candidate)
            return jnp.where(accept[:, None], candidate, z), accept

        def distance(z):
            return jnp.sum(z != xf, axis=1).astype(jnp.int32)

        def reset_body(carry):
            z, _, p, history = carry
            z, accepted = jax.lax.scan(reset_visit, z, permutations(k_pass, p).T)
            return z, jnp.any(accepted, axis=0), p + 1, history.at[p + 1].set(distance(z))

        def pass_cond(limit):
            def cond(carry):
                _, changed, p = carry[:3]
                return (p < limit) & jnp.any(changed)

            return cond

        history = jnp.tile(distance(start)[None], (self.steps + 1, 1))
        z, _, passes, history = jax.lax.while_loop(
            pass_cond(self.steps), reset_body, (start, found, jnp.int32(0), history)
        )
        done = jnp.arange(self.steps + 1)[:, None] <= passes
        history = jnp.where(done, history, distance(z)[None])

        # 3. Foolbox's binary-search refinement.
        def refine_visit(z, idx):
            original, current = xf[rows, idx], z[rows, idx]
            differs = current != original
            reset_ok = adversarial(set_feature(z, idx, original))

            def halve(bounds, _):
                adv_value, clean_value = bounds
                middle = (adv_value + clean_value) / 2
                ok = adversarial(set_feature(z, idx, middle))
                return (jnp.where(ok, middle, adv_value), jnp.where(ok, clean_value, middle)), None

            (closest, _), _ = jax.lax.scan(
                halve, (current, original), None, length=self.binary_search_steps
            )
            new = jnp.where(differs, jnp.where(reset_ok, original, closest), current)
            return set_feature(z, idx, new), differs & (new != current)

        def refine_body(carry):
            z, _, p = carry
            z, improved = jax.lax.scan(refine_visit, z, permutations(k_refine, p).T)
            return z, jnp.any(improved, axis=0), p + 1

        if self.refine_steps:
            z, _, _ = jax.lax.while_loop(
                pass_cond(self.refine_steps), refine_body, (z, found, jnp.int32(0))
            )

        l0 = distance(z)
        ok = adversarial(z)
        if self.eps is not None:
            ok &= l0 <= self.eps
        x_adv = jnp.where(ok[:, None], z, xf).reshape(shape)
        loss = jnp.where(ok, -l0.astype(x.dtype), -jnp.inf)
        return AttackResult(x_adv=x_adv, loss=loss, success=ok), history


def pointwise(
    eps: float | None = None,
    steps: int = 10,
    *,
    init: str = "salt_and_pepper",
    init_steps: int = 100,
    refine_steps: int = 0,
    binary_search_steps: int = 10,
) -> Pointwise:
    """Point-wise attack (Schott et al. 2019): noisy adversarial start, then greedy feature resets
    (at most ``steps`` passes).

    ``eps=None`` counts every adversarial found (the accuracy SRT's Table 4 reports); a number is
    an L0 budget in changed features. ``refine_steps > 0`` adds foolbox's binary searches.
    """
    return Pointwise(
        eps=eps,
        steps=steps,
        init=init,
        init_steps=init_steps,
        refine_steps=refine_steps,
        binary_search_steps=binary_search_steps,
    )
