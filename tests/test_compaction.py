"""compaction.on_active: work on the active rows only, in static buckets, results unchanged."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks import compaction


def rowwise(x, w):
    """A row-independent computation with a pytree output."""
    return {"sum": jnp.sum(x * w, axis=-1), "rows": jnp.full(x.shape[0], x.shape[0])}


@pytest.mark.parametrize("num_active", [0, 1, 2, 3, 5, 9, 16])
def test_on_active_equals_masked_full_batch_and_uses_the_smallest_bucket(num_active):
    batch = 16
    x = jax.random.normal(jax.random.key(0), (batch, 4))
    w = jax.random.normal(jax.random.key(1), (batch, 4))
    active = np.zeros(batch, bool)
    active[np.random.default_rng(num_active).permutation(batch)[:num_active]] = True
    fallback = {"sum": jnp.full(batch, -7.0), "rows": jnp.zeros(batch, jnp.int32)}

    out = jax.jit(
        lambda a: compaction.on_active(rowwise, a, (x, w), fallback, buckets=(0.25, 0.5))
    )(jnp.asarray(active))

    expected = np.where(active, np.sum(np.asarray(x * w), -1), -7.0)
    np.testing.assert_allclose(out["sum"], expected, rtol=1e-6)
    bucket = min(s for s in (4, 8, 16) if s >= num_active) if num_active else 0
    np.testing.assert_array_equal(out["rows"], np.where(active, bucket, 0))


def test_each_bucket_is_traced_once():
    batch = 8

    @chex.assert_max_traces(n=3)  # one trace per bucket size (2, 4, 8), none per call
    def work(x):
        return 2.0 * x

    run = jax.jit(lambda a, x: compaction.on_active(work, a, (x,), jnp.zeros(batch), (0.25, 0.5)))
    x = jnp.arange(batch, dtype=jnp.float32)
    for count in (1, 3, 8, 0, 2):
        active = jnp.arange(batch) < count
        np.testing.assert_allclose(run(active, x), np.where(np.arange(batch) < count, 2 * x, 0))


@pytest.mark.parametrize("num_active", [0, 6, 11])
def test_passes_of_at_most_pass_rows_equal_one_pass(num_active):
    batch, pass_rows = 16, 5
    x = jax.random.normal(jax.random.key(2), (batch, 4))
    w = jax.random.normal(jax.random.key(3), (batch, 4))
    active = np.zeros(batch, bool)
    active[np.random.default_rng(num_active).permutation(batch)[:num_active]] = True
    fallback = {"sum": jnp.full(batch, -7.0), "rows": jnp.zeros(batch, jnp.int32)}

    def run(a, p):
        return compaction.on_active(rowwise, a, (x, w), fallback, (0.125, 0.5), pass_rows=p)

    passes = jax.jit(run, static_argnums=1)(jnp.asarray(active), pass_rows)
    single = jax.jit(run, static_argnums=1)(jnp.asarray(active), None)
    np.testing.assert_allclose(passes["sum"], single["sum"], rtol=1e-6)
    # Buckets are fractions of the pass: sizes (1, 3, 5), each pass on the bucket pass_plan picks
    # (11 active rows: 5 + 5 + 1; 6: 5 + 1).
    expected_sizes = {0: [], 6: [5, 1], 11: [5, 5, 1]}[num_active]
    assert compaction.bucket_sizes(pass_rows, (0.125, 0.5)) == (1, 3, 5)
    np.testing.assert_array_equal(
        np.sort(passes["rows"][active]), np.sort(np.repeat(expected_sizes, expected_sizes))
    )
    np.testing.assert_array_equal(passes["rows"][~active], 0)
    # Reverse-mode differentiable (a scan over the passes).
    grad = jax.grad(
        lambda v: jnp.sum(
            compaction.on_active(
                lambda xr: jnp.sum(xr**2, -1),
                jnp.asarray(active),
                (v,),
                jnp.zeros(batch),
                (1.0,),
                5,
            )
        )
    )(x)
    np.testing.assert_allclose(grad, np.where(active[:, None], 2 * np.asarray(x), 0.0), rtol=1e-6)
    with pytest.raises(ValueError, match="pass_rows"):
        run(jnp.asarray(active), 0)


def _fewest_rows(left: int, sizes: tuple[int, ...], overhead: int) -> int:
    """Brute force: the least ``rows + overhead * passes`` that covers ``left`` rows."""
    best = {0: 0}
    for n in range(1, left + 1):
        best[n] = min(s + overhead + best[max(n - s, 0)] for s in sizes)
    return best[left]


@pytest.mark.parametrize("sizes", [(2, 8, 32, 64, 128), (1, 3, 5), (7,), (8, 32, 125, 128)])
@pytest.mark.parametrize("overhead", [0, 4])
def test_pass_plan_is_cheapest_and_covers_every_row(sizes, overhead):
    batch = 300
    choice, passes = compaction.pass_plan(batch, sizes, overhead)
    most = 0
    for left in range(1, batch + 1):
        plan, n = [], left
        while n > 0:
            plan.append(sizes[choice[n]])
            n -= plan[-1]
        most = max(most, len(plan))
        assert sum(plan) >= left and sum(plan) - plan[-1] < left  # every pass has active rows
        assert sum(plan) + overhead * len(plan) == _fewest_rows(left, sizes, overhead)
    assert passes == most
    choice, _ = compaction.pass_plan(500, (2, 8, 32, 64, 128))
    plan, n = [], 232  # the robust points of a 500-point AutoAttack batch after APGD-CE
    while n > 0:
        plan.append((2, 8, 32, 64, 128)[choice[n]])
        n -= plan[-1]
    assert plan == [128, 64, 32, 8]


def test_bucket_sizes_and_bad_buckets():
    assert compaction.bucket_sizes(100, (1.0, 0.5, 0.125)) == (13, 50, 100)
    assert compaction.bucket_sizes(10, (0.01, 32)) == (1, 10)  # a count above 1 is a row count
    with pytest.raises(ValueError, match="positive"):
        compaction.bucket_sizes(10, (0.0,))
