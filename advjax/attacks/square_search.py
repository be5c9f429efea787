"""Square attack (Andriushchenko et al., ECCV 2020): score-based black-box random search.

Only forward passes of the model are used (its logits, through the margin or cross-entropy loss).
Per example, from a vertical-stripe start (Linf) or a grid of "meta pseudo-Gaussian" tiles (L2)::

    for i in range(steps):  # one query per step
        s = side(p(i))   # square side: round(sqrt(p * H * W)); p halves on a fixed schedule
        x_new = x_best with one random s x s window changed (Algorithm 1 / 3 of the paper)
        if x_new misclassified or loss(x_new) better than loss(x_best): x_best = x_new

Linf update (Alg. 2): the window is set to ``x ± eps`` (one random sign per channel), clipped to
the box. L2 update (Alg. 3): a second window's perturbation is removed and its mass, with the
unused budget, moved into the first window as ``eta(s) * sign + old / ||old||`` (``eta`` is the
sum-of-nested-squares pattern of the paper, positive on one half and negative on the other, randomly
transposed), then the whole perturbation is rescaled to L2 norm ``eps`` and clipped to the box.

Fixed shapes: every example draws its own window positions, signs and transpose coin from its own
key at every iteration; windows are masks from ``iota`` comparisons with a traced side ``s`` (the
side depends only on the iteration, through a static schedule table). Examples already broken are
masked and stop changing (and stop counting queries). The loop is a ``lax.while_loop`` that exits
early once every example is broken; restarts run sequentially (``lax.scan``) on the examples that
are still robust, like the reference.

Deviations from fra31/auto-attack ``square.py`` (documented, deliberate):

* Window positions and signs are per example (as in the original max-andr/square-attack code; the
  auto-attack port shares them across the batch) and range over every valid position
  ``0 .. H - s`` (the references draw ``0 .. H - s - 1``, so the last row and column are never the
  top-left corner of a window).
* Linf: a proposal that would not change ``x_best`` is replaced by a uniformly random different
  sign pattern (the original code resamples in a loop; auto-attack wastes the query). On MNIST,
  where most pixels sit at 0 and ``x - eps`` clips back to ``x``, this is what makes advjax's
  Square stronger than the reference's: ``redraw_unchanged=False`` spends the query as the
  reference does (results/autoattack_speed_reference.md measures both).
* The square side is capped at ``min(H, W)`` (non-square images) and the L2 start tiles have side
  ``max(H // 5, 1)`` (the reference divides by zero for ``H < 5``).
* ``x_adv`` for examples that stay robust is the best point found (highest loss, which may be the
  clean ``x``), not ``x`` itself; ``loss`` is the attack objective at ``x_adv`` in advjax's
  maximised convention (``losses.margin`` = ``max_{j != y} z_j - z_y``, or the cross-entropy).
* Randomness: the key gives two seed words per example (``jax.random.bits``; per-example keys
  make an example's run independent of its batch); every draw (restart ``r``'s start, window
  positions, signs) comes from a counter-based integer hash of the seed and the iteration, which
  keeps threefry, whose compilation is slow, out of the query loop. Restart 0 does not depend on
  ``restarts``, so more restarts never give a worse result.
* ``success`` is ``argmax(model(x_adv)) != y`` (``== y`` targeted), the stop criterion of the loop
  (the reference stops at a margin ``<= 0``, which differs only on exact ties).
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
    AttackResult,
    ModelFn,
    QueryAttack,
    better,
    check_nonnegative,
    is_label_vector,
    success,
    validated,
)
from advjax.attacks.random_bits import INIT_SALT, random_signs, restart_seed, step_bits

SQUARE_NORMS = ("linf", "l2")
SQUARE_LOSSES = ("margin", "ce")
# p schedule of the paper (on a 10,000-query scale): p = p_init / 2**k after the k-th threshold.
_P_THRESHOLDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_NUM_LEVELS = len(_P_THRESHOLDS) + 1
_MAX_LINF_CHANNELS = 30


def p_levels(steps: int, rescale: bool = True) -> np.ndarray:
    """Schedule level ``k`` (``p = p_init / 2**k``) of each iteration ``0 .. steps - 1``.

    With ``rescale`` the iteration is mapped to the 10,000-query scale of the paper first
    (``int(i / steps * 10000)``, as ``resc_schedule=True`` in the reference).
    """
    its = np.arange(max(int(steps), 1))
    if rescale:
        its = (its / max(int(steps), 1) * 10000).astype(np.int64)
    return np.searchsorted(np.asarray(_P_THRESHOLDS), its, side="left").astype(np.int32)


def square_sides(norm: str, p_init: float, height: int, width: int) -> np.ndarray:
    """Square side for each schedule level: ``round(sqrt(p * H * W))`` (L2: odd and >= 3)."""
    sides = []
    for level in range(_NUM_LEVELS):
        p = p_init / 2**level
        s = int(round(math.sqrt(p * height * width)))
        if norm == "linf":
            s = max(s, 1)
        else:
            s = max(s, 3)
            s += 1 - s % 2
        sides.append(min(s, height, width))
    return np.asarray(sides, dtype=np.int32)


def _eta_rectangle(rows: int, cols: int) -> np.ndarray:
    """Sum of nested centred squares weighted ``1 / (k + 1)**2``, unit L2 norm (paper, Sec. 4)."""
    if rows == 0 or cols == 0:
        return np.zeros((rows, cols))
    ci, cj = rows // 2, cols // 2  # centre (the reference's x_c - 1, y_c - 1)
    levels = max(ci, cj) + 1
    tail = np.cumsum(1.0 / np.arange(levels, 0, -1) ** 2)[::-1]  # tail[d] = sum_{k>=d} 1/(k+1)^2
    dist = np.maximum(np.abs(np.arange(rows)[:, None] - ci), np.abs(np.arange(cols)[None, :] - cj))
    pattern = tail[dist]
    return pattern / np.sqrt(np.sum(pattern**2))


def eta(s: int) -> np.ndarray:
    """The ``s x s`` L2 update pattern: nested squares, ``+`` on the top half, ``-`` below."""
    if s == 0:
        return np.zeros((0, 0))
    pattern = np.concatenate([_eta_rectangle(s // 2, s), -_eta_rectangle(s - s // 2, s)], axis=0)
    return pattern / np.sqrt(np.sum(pattern**2))


def _window(vh: jax.Array, vw: jax.Array, s: jax.Array, height: int, width: int) -> jax.Array:
    """Boolean ``[H, W]`` mask of the ``s x s`` window with top-left corner ``(vh, vw)``."""
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    return (rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s)


def _l2_init_maps(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Static tiling of the L2 start: tile id per pixel (-1: none), eta and transposed eta."""
    s = max(height // 5, 1)
    start = max((height - 5 * s) // 2, 0)
    tile_id = -np.ones((height, width), np.int32)
    plain = np.zeros((height, width))
    transposed = np.zeros((height, width))
    pattern = eta(s)
    count = 0
    for a in range(height // s):
        for b in range(width // s):
            vh, vw = start + a * s, start + b * s
            rows, cols = max(min(s, height - vh), 0), max(min(s, width - vw), 0)
            if rows and cols:
                tile_id[vh : vh + rows, vw : vw + cols] = count
                plain[vh : vh + rows, vw : vw + cols] = pattern[:rows, :cols]
                transposed[vh : vh + rows, vw : vw + cols] = pattern.T[:rows, :cols]
                count += 1
    return tile_id, plain, transposed


def _uniform_int(bits: jax.Array, n: jax.Array | int) -> jax.Array:
    """An integer in ``[0, n)`` from 32 random bits (modulo bias below ``n / 2**32``)."""
    return (bits % jnp.asarray(n).astype(jnp.uint32)).astype(jnp.int32)


def _bit_vector(word: jax.Array, n: int) -> jax.Array:
    """The ``n`` low bits of an integer word, as a boolean vector."""
    return ((word.astype(jnp.uint32) >> jnp.arange(n, dtype=jnp.uint32)) & 1) == 1


def _l2_norm(v: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(v * v))


@dataclasses.dataclass(frozen=True)
class Square(QueryAttack):
    """Square attack (Andriushchenko et al. 2020, Alg. 1-3): score-based random search.

    Attributes:
      eps: radius of the Linf or L2 ball.
      norm: "linf" or "l2".
      steps: iterations (one query each) per restart, after the query of the starting point.
      p_init: initial fraction of pixels changed by one square (``p`` schedule of the paper).
      restarts: sequential restarts, each on the examples not yet broken.
      loss: "margin" (``z_y - max_{j != y} z_j`` minimised) or "ce" (cross-entropy maximised).
      targeted: reach the class ``y`` instead of leaving it.
      rescale_schedule: map the ``p`` schedule onto ``steps`` (reference ``resc_schedule``);
        without it the schedule is read on the paper's absolute 10,000-query scale, so a run with
        fewer queries is exactly a prefix of a run with more.
      redraw_unchanged: Linf: replace a proposal that would leave ``x_best`` unchanged by a random
        different sign pattern (default; the original square-attack code) instead of spending the
        query on it (``False``: fra31/auto-attack's behaviour, for reproducing its numbers).
    """

    eps: float
    steps: int
    norm: str
    p_init: float
    restarts: int
    loss: str
    targeted: bool
    rescale_schedule: bool
    redraw_unchanged: bool = True

    def __post_init__(self):
        check_nonnegative(eps=self.eps, steps=self.steps)
        if int(self.steps) != self.steps:
            raise ValueError(f"steps must be an integer, got {self.steps}")
        if int(self.restarts) != self.restarts or self.restarts < 1:
            raise ValueError(f"restarts must be a positive integer, got {self.restarts}")
        if self.norm not in SQUARE_NORMS:
            raise ValueError(
                f"unknown norm {self.norm!r} for the square attack; valid norms: "
                f"{', '.join(SQUARE_NORMS)}"
            )
        if not 0 < self.p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {self.p_init}")
        if self.loss not in SQUARE_LOSSES:
            raise ValueError(
                f"unknown loss {self.loss!r} for the square attack; valid losses: "
                f"{', '.join(SQUARE_LOSSES)}"
            )

    def scaled(self, factor: Any) -> Square:
        return dataclasses.replace(self, eps=self.eps * factor)

    @validated
    def run_with_queries(
        self, model_fn: ModelFn, variables: Any, x: jax.Array, y: Any, key: jax.Array
    ) -> tuple[AttackResult, jax.Array]:
        """``run`` plus the per-example number of model queries spent (int32 ``[B]``).

        The clean prediction check is not counted (as in the reference); each restart that an
        example takes part in costs one query for its start plus one per iteration until broken.
        """
        if not is_label_vector(y):
            raise ValueError(
                "the square attack needs integer labels y of shape [batch] (target labels when "
                f"targeted), got {getattr(y, 'shape', type(y).__name__)}"
            )
        batch, _, _, channels = x.shape
        if self.norm == "linf" and channels > _MAX_LINF_CHANNELS:
            raise ValueError(
                f"the Linf square attack supports at most {_MAX_LINF_CHANNELS} channels, "
                f"got {channels}"
            )
        x = jax.lax.stop_gradient(x)
        # Two seed words per example from the key (one threefry call); every draw of the attack
        # (restart r's start and its query loop) comes from a counter-based stream of the seed.
        if key.ndim == 0:
            seeds = jax.random.bits(key, (batch, 2))
        else:
            seeds = jax.vmap(lambda k: jax.random.bits(k, (2,)))(key)

        objective = self._objective(y)
        logits = model_fn(variables, x)
        best = (x, objective(logits), success(logits, y, self.targeted))
        queries = jnp.zeros(batch, jnp.int32)

        def restart(carry, r):
            best, queries = carry
            done = best[2]
            seeds_r = jax.vmap(restart_seed, in_axes=(0, None))(seeds, r)
            (x_r, obj_r, ok_r), q_r = self._single_run(model_fn, variables, x, y, seeds_r, done)
            take = ~done & better(ok_r, obj_r, best[2], best[1])
            best = (
                jnp.where(take[:, None, None, None], x_r, best[0]),
                jnp.where(take, obj_r, best[1]),
                jnp.where(take, ok_r, best[2]),
            )
            return (best, queries + q_r), None

        indices = jnp.arange(int(self.restarts), dtype=jnp.uint32)
        (best, queries), _ = jax.lax.scan(restart, (best, queries), indices)
        result = AttackResult(x_adv=best[0], loss=best[1], success=best[2])
        return result, queries

    def _objective(self, y: jax.Array):
        loss_fn = losses.get_loss(self.loss)
        sign = -1.0 if self.targeted else 1.0
        return lambda logits: sign * loss_fn(logits, y)

    def _num_init_words(self, shape: tuple[int, ...]) -> int:
        _, height, width, channels = shape
        if self.norm == "linf":
            return width * channels
        return (int(_l2_init_maps(height, width)[0].max()) + 1) * (1 + channels)

    def _single_run(self, model_fn, variables, x, y, seeds, done):
        """One restart on every example not ``done``: returns ``(x_best, obj, success), queries``.

        ``seeds`` ``[B, 2]``: the restart's random seed words per example.
        """
        _, height, width, channels = x.shape
        steps = int(self.steps)
        levels = jnp.asarray(p_levels(steps, self.rescale_schedule))
        side_table = square_sides(self.norm, self.p_init, height, width)
        sides = jnp.asarray(side_table)
        objective = self._objective(y)
        init_seeds = seeds ^ jnp.asarray(INIT_SALT, jnp.uint32)
        init_words = jax.vmap(step_bits, in_axes=(0, None, None))(
            init_seeds, jnp.asarray(0, jnp.uint32), self._num_init_words(x.shape)
        )

        if self.norm == "linf":
            x0 = jax.vmap(self._init_linf)(init_words, x)
            propose = self._propose_linf
            table = None
            num_words = 4
        else:
            num_words = 5 + channels
            x0 = jax.vmap(self._init_l2)(init_words, x)
            propose = self._propose_l2
            table = self._eta_table(side_table)

        logits = model_fn(variables, x0)
        state = (
            jnp.asarray(0, jnp.int32),
            x0,
            objective(logits),
            success(logits, y, self.targeted),
            (~done).astype(jnp.int32),
        )

        def cond(state):
            i, _, _, ok, _ = state
            return (i < steps) & jnp.any(~ok & ~done)

        def body(state):
            i, x_best, obj, ok, queries = state
            active = ~ok & ~done
            level = levels[i]
            bits = jax.vmap(step_bits, in_axes=(0, None, None))(seeds, i, num_words)
            x_new = jax.vmap(propose, in_axes=(0, 0, 0, None, None))(
                bits, x, x_best, sides[level], None if table is None else table[level]
            )
            logits = model_fn(variables, x_new)
            new_obj = objective(logits)
            new_ok = success(logits, y, self.targeted)
            take = active & better(new_ok, new_obj, ok, obj)
            return (
                i + 1,
                jnp.where(take[:, None, None, None], x_new, x_best),
                jnp.where(take, new_obj, obj),
                jnp.where(take, new_ok, ok),
                queries + active.astype(jnp.int32),
            )

        _, x_best, obj, ok, queries = jax.lax.while_loop(cond, body, state)
        return (x_best, obj, ok), queries

    # Linf -------------------------------------------------------------------------------------

    def _init_linf(self, words: jax.Array, x: jax.Array) -> jax.Array:
        """Vertical stripes: ``x + eps * sign`` with one random sign per column and channel."""
        _, width, channels = x.shape
        signs = random_signs(words.reshape(1, width, channels), x.dtype)
        return jnp.clip(x + self.eps * signs, 0.0, 1.0)

    def _propose_linf(self, bits, x, x_best, s, _table):
        """One window of ``x_best`` set to ``x ± eps`` (a random sign per channel), in the box."""
        height, width, channels = x.shape
        vh = _uniform_int(bits[0], height - s + 1)
        vw = _uniform_int(bits[1], width - s + 1)
        window = _window(vh, vw, s, height, width)[..., None]
        lo = jnp.maximum(x - self.eps, 0.0)
        hi = jnp.minimum(x + self.eps, 1.0)
        up = _bit_vector(bits[2], channels)
        # A sign pattern that reproduces x_best on the window would waste the query: draw a
        # uniformly random different one (XOR with a random non-zero channel mask).
        at_hi = jnp.all(jnp.where(window, x_best == hi, True), axis=(0, 1))
        at_lo = jnp.all(jnp.where(window, x_best == lo, True), axis=(0, 1))
        unchanged = jnp.all(jnp.where(up, at_hi, at_lo))
        flip = _bit_vector(1 + _uniform_int(bits[3], 2**channels - 1), channels)
        up = jnp.where(unchanged & self.redraw_unchanged, up ^ flip, up)
        return jnp.where(window, jnp.where(up, hi, lo), x_best)

    # L2 ---------------------------------------------------------------------------------------

    def _eta_table(self, sides: np.ndarray) -> jax.Array:
        """Static ``[levels, S, S]`` table of ``eta(s)`` per schedule level (zero padded)."""
        size = int(sides.max())
        table = np.zeros((_NUM_LEVELS, size, size), np.float32)
        for level, s in enumerate(sides):
            table[level, :s, :s] = eta(int(s))
        return jnp.asarray(table)

    def _init_l2(self, words: jax.Array, x: jax.Array) -> jax.Array:
        """Grid of ``eta`` tiles with random signs and orientations, rescaled to norm ``eps``."""
        height, width, channels = x.shape
        tile_id, plain, transposed = _l2_init_maps(height, width)
        num_tiles = int(tile_id.max()) + 1
        words = words.reshape(num_tiles, 1 + channels)
        coin = (words[:, 0] & 1) == 1
        signs = random_signs(words[:, 1:], x.dtype)
        ids = jnp.asarray(np.maximum(tile_id, 0))
        pattern = jnp.where(coin[ids], jnp.asarray(transposed), jnp.asarray(plain)).astype(x.dtype)
        delta = jnp.where(jnp.asarray(tile_id >= 0)[..., None], pattern[..., None] * signs[ids], 0)
        delta = delta / (_l2_norm(delta) + 1e-12)
        return jnp.clip(x + self.eps * delta, 0.0, 1.0)

    def _propose_l2(self, bits, x, x_best, s, pattern_table):
        """Alg. 3: move the mass of window 2 and the unused budget into window 1."""
        height, width, channels = x.shape
        size = pattern_table.shape[0]
        vh = _uniform_int(bits[0], height - s + 1)
        vw = _uniform_int(bits[1], width - s + 1)
        vh2 = _uniform_int(bits[2], height - s + 1)
        vw2 = _uniform_int(bits[3], width - s + 1)
        win1 = _window(vh, vw, s, height, width)
        win2 = _window(vh2, vw2, s, height, width)
        w1 = win1[..., None]

        # eta(s) placed at (vh, vw), transposed with probability 1/2.
        rows = jnp.arange(height)[:, None] - vh
        cols = jnp.arange(width)[None, :] - vw
        coin = (bits[4] & 1) == 1
        a = jnp.clip(jnp.where(coin, cols, rows), 0, size - 1)
        b = jnp.clip(jnp.where(coin, rows, cols), 0, size - 1)
        pattern = jnp.where(win1, pattern_table[a, b], 0.0).astype(x.dtype)
        signs = random_signs(bits[5:], x.dtype)

        delta = x_best - x
        norm_window1 = jnp.sqrt(jnp.sum(jnp.where(w1, delta**2, 0.0), axis=(0, 1)))  # [C]
        norm_image = _l2_norm(delta)
        norm_windows = _l2_norm(jnp.where((win1 | win2)[..., None], delta, 0.0))
        new = pattern[..., None] * signs + jnp.where(w1, delta / (1e-12 + norm_window1), 0.0)
        norm_new = jnp.sqrt(jnp.sum(jnp.where(w1, new**2, 0.0), axis=(0, 1)))  # [C]
        budget = jnp.maximum(self.eps**2 - norm_image**2, 0.0) / channels + norm_windows**2
        new = new / (1e-12 + norm_new) * jnp.sqrt(budget)
        delta = jnp.where(win2[..., None], 0.0, delta)
        delta = jnp.where(w1, new, delta)
        return jnp.clip(x + self.eps * delta / (1e-12 + _l2_norm(delta)), 0.0, 1.0)


def square(
    eps: float,
    steps: int = 5000,
    *,
    norm: str = "linf",
    p_init: float = 0.8,
    restarts: int = 1,
    loss: str = "margin",
    targeted: bool = False,
    rescale_schedule: bool = True,
    redraw_unchanged: bool = True,
) -> Square:
    """Square attack (Andriushchenko et al., ECCV 2020), score-based black-box, Linf or L2.

    Published defaults (as in AutoAttack): 5000 queries (``steps``, one query each),
    ``p_init = 0.8``, margin loss, one restart; targeted: ``y`` are the targets.
    ``attack.run_with_queries(...)`` also returns the per-example number of queries.
    """
    return Square(
        eps=eps,
        steps=steps,
        norm=norm,
        p_init=p_init,
        restarts=restarts,
        loss=loss,
        targeted=targeted,
        rescale_schedule=rescale_schedule,
        redraw_unchanged=redraw_unchanged,
    )
