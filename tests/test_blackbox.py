"""Black-box attacks: Square (score-based), RayS (hard-label) and transfer attacks.

Closed forms come from the linear model ``z = W^T x + b`` of conftest: at an interior point (the
box inactive) the smallest perturbation that makes class ``j`` beat ``y`` has Linf norm
``(z_y - z_j) / ||w_y - w_j||_1`` and L2 norm ``(z_y - z_j) / ||w_y - w_j||_2``.

Compiles dominate the run time, so the tests share a few jitted configurations (the radius is
traced through ``Attack.scaled``) and check results with NumPy.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks.base import Attack
from advjax.attacks.gradient import pgd
from advjax.attacks.ray_search import rays
from advjax.attacks.square_search import eta, p_levels, square, square_sides
from advjax.attacks.surrogate import transfer
from tests.conftest import linear_model_fn

# ---------------------------------------------------------------------------------------------
# Models and NumPy references.


@jax.custom_vjp
def _forward_only(x):
    return x


def _forward_only_fwd(x):
    return x, None


def _forward_only_bwd(_, g):
    raise AssertionError("a black-box attack asked for a gradient of the model")


_forward_only.defvjp(_forward_only_fwd, _forward_only_bwd)

_QUERIES: list[np.ndarray] = []


def _record(x):
    _QUERIES.append(np.asarray(x))


def watched_linear(variables, x):
    """The linear model, differentiable only by error, recording every batch it is queried on."""
    jax.debug.callback(_record, x)
    return linear_model_fn(variables, _forward_only(x))


def label_only_linear(variables, x):
    """The linear model reduced to its predicted label (one-hot logits)."""
    logits = linear_model_fn(variables, x)
    return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1])


def _np_logits(variables, x):
    x = np.asarray(x, np.float64)
    return x.reshape(x.shape[0], -1) @ np.asarray(variables["w"]) + np.asarray(variables["b"])


def _margin(logits, y):
    """advjax's margin ``max_{j != y} z_j - z_y`` in NumPy."""
    own = np.take_along_axis(logits, np.asarray(y)[:, None], 1)[:, 0]
    others = np.where(np.eye(logits.shape[1], dtype=bool)[y], -np.inf, logits)
    return others.max(1) - own


def _min_distance(variables, x, y, norm):
    """Closed-form distance to the decision boundary of the linear model (box inactive)."""
    w = np.asarray(variables["w"], np.float64)
    logits = _np_logits(variables, x)
    y = np.asarray(y)
    diff = w[:, y].T[:, :, None] - w[None]  # [B, D, K]: w_y - w_j
    gaps = np.take_along_axis(logits, y[:, None], 1) - logits
    scale = np.abs(diff).sum(1) if norm == "linf" else np.linalg.norm(diff, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = gaps / scale
    return np.where(np.eye(w.shape[1], dtype=bool)[y], np.inf, ratio).min(1)


def _norms(delta, norm):
    flat = np.asarray(delta, np.float64).reshape(delta.shape[0], -1)
    return np.abs(flat).max(1) if norm == "linf" else np.linalg.norm(flat, axis=1)


def _batch(linear_model, seed=1):
    """Interior points (the box is inactive below 0.2): labels are the model's predictions."""
    x = np.random.default_rng(seed).uniform(0.2, 0.8, (8, 8, 8, 1)).astype(np.float32)
    return x, _np_logits(linear_model[1], x).argmax(1).astype(np.int32)


_TRACES: dict = {}


def _traced_once(name):
    _TRACES[name] = _TRACES.get(name, 0) + 1
    assert _TRACES[name] == 1, f"{name} traced again"


@functools.cache
def _square_fn(norm, n_queries, n_restarts=1, rescale_schedule=True):
    """A jitted Square run on ``watched_linear`` with a traced eps.

    Each configuration must be traced only once (``chex.assert_max_traces``) whatever the images,
    labels, keys and radius of the call.
    """
    attack = square(
        1.0, n_queries, norm=norm, restarts=n_restarts, rescale_schedule=rescale_schedule
    )

    def run(variables, x, y, keys, eps):
        return attack.scaled(eps).run_with_queries(watched_linear, variables, x, y, keys)

    run.__name__ = f"square_{norm}_{n_queries}_{n_restarts}_{rescale_schedule}"  # chex's counter
    return jax.jit(chex.assert_max_traces(run, n=1))


def _keys(seed, batch=8):
    return jax.random.split(jax.random.key(seed), batch)


def _run_square(linear_model, x, y, keys, eps, norm="linf", n_queries=300, **kwargs):
    """``keys``: per-example keys, or an int seed for them (one trace per configuration)."""
    _QUERIES.clear()
    keys = _keys(keys, x.shape[0]) if isinstance(keys, int) else keys
    fn = _square_fn(norm, n_queries, **kwargs)
    result, queries = fn(linear_model[1], x, y, keys, np.float32(eps))
    return jax.tree.map(np.asarray, result), np.asarray(queries)


# ---------------------------------------------------------------------------------------------
# Square


def test_eta_and_schedule_match_the_reference():
    # eta(5): on each half, nested squares around its centre weighted 1/(k+1)^2 (a: outer ring
    # only, b: two rings, c: centre), each half of unit norm, then the whole; bottom half negative.
    a, b, c = 1 / 9, 1 / 4 + 1 / 9, 1 + 1 / 4 + 1 / 9
    top = np.array([[a, b, b, b, a], [a, b, c, b, a]])
    bottom = np.array([[a, b, b, b, a], [a, b, c, b, a], [a, b, b, b, a]])
    expected = np.concatenate([top / np.linalg.norm(top), -bottom / np.linalg.norm(bottom)])
    np.testing.assert_allclose(eta(5), expected / np.linalg.norm(expected), atol=1e-12)
    assert np.isclose(np.linalg.norm(eta(7)), 1.0)
    # 10,000 queries: p halves after iterations 10, 50, 200, ..., 8000 (paper, Sec. 4); rescaled
    # to 1000 queries the thresholds fall ten times earlier.
    levels = p_levels(10000)
    checkpoints = (0, 10, 11, 50, 51, 200, 201, 8000, 8001, 9999)
    assert [int(levels[i]) for i in checkpoints] == [0, 0, 1, 1, 2, 2, 3, 8, 9, 9]
    np.testing.assert_array_equal(p_levels(1000), levels[::10])
    np.testing.assert_array_equal(p_levels(1000, rescale=False), levels[:1000])
    # CIFAR-10 size, p_init = 0.05: s = round(sqrt(0.05 * 1024)) = 7, then 5, 4, ..., at least 1.
    np.testing.assert_array_equal(
        square_sides("linf", 0.05, 32, 32), [7, 5, 4, 3, 2, 1, 1, 1, 1, 1]
    )
    assert all(s % 2 == 1 and s >= 3 for s in square_sides("l2", 0.8, 28, 28))


@pytest.mark.parametrize("norm,eps,slack", [("linf", 0.015, 1.2), ("l2", 0.12, 1.6)])
def test_square_queries_stay_in_the_ball_and_break_what_the_closed_form_allows(
    linear_model, norm, eps, slack
):
    x, y = _batch(linear_model)
    d = _min_distance(linear_model[1], x, y, norm)
    assert (d > eps).any() and (d < eps / slack).any()
    result, queries = _run_square(linear_model, x, y, 0, eps, norm)
    # Every query: the clean batch, then points of the ball ∩ box. The model raises on any
    # gradient, so getting here also shows that the attack used forward passes only.
    assert len(_QUERIES) == 1 + queries.max()
    np.testing.assert_array_equal(_QUERIES[0], x)
    for batch in [*_QUERIES[1:], result.x_adv]:
        assert (_norms(batch - x, norm) <= eps * (1 + 1e-5)).all(), norm
        assert ((batch >= 0) & (batch <= 1)).all()
    # Success is the model's prediction at x_adv; loss is the margin there.
    logits = _np_logits(linear_model[1], result.x_adv)
    np.testing.assert_array_equal(result.success, logits.argmax(1) != y)
    np.testing.assert_allclose(result.loss, _margin(logits, y), atol=1e-4)
    # Closed form: broken wherever the boundary is well inside the ball; never where it is out.
    assert result.success[d < eps / slack].all(), (d, result.success)
    assert not result.success[d > eps].any()
    # Broken examples stopped querying; the others used the whole budget (and the start).
    assert (queries[result.success] <= 301).all() and (queries[~result.success] == 301).all()

    # A ball smaller than every boundary distance: nothing is broken, the margin stays < 0.
    result, _ = _run_square(linear_model, x, y, 0, 0.9 * d.min(), norm)
    assert not result.success.any() and (result.loss < 0).all()


def test_forward_only_model_really_refuses_gradients(linear_model):
    x, y = _batch(linear_model)
    with pytest.raises(AssertionError, match="gradient"):
        jax.grad(lambda x: watched_linear(linear_model[1], x).sum())(x)


def test_square_more_queries_or_restarts_never_give_a_worse_margin(linear_model):
    x, y = _batch(linear_model)
    clean = _margin(_np_logits(linear_model[1], x), y)
    # With the absolute p schedule a short run is a prefix of a long one.
    fixed = dict(rescale_schedule=False)
    short, q_short = _run_square(linear_model, x, y, 3, 0.01, n_queries=40, **fixed)
    long, _ = _run_square(linear_model, x, y, 3, 0.01, n_queries=300, **fixed)
    assert (short.loss >= clean).all() and (long.loss >= short.loss).all()
    assert (long.success | ~short.success).all()
    assert (long.loss > short.loss + 1e-3).any() and (long.success & ~short.success).any()
    # Restarts nest: the first restart is the same run, and the examples it broke sit out the
    # second one.
    two, q_two = _run_square(linear_model, x, y, 3, 0.01, n_queries=40, n_restarts=2, **fixed)
    assert (two.loss >= short.loss).all() and (two.success | ~short.success).all()
    np.testing.assert_array_equal(np.where(short.success, q_two, q_short), q_short)
    np.testing.assert_array_equal(two.x_adv[short.success], short.x_adv[short.success])
    assert ((q_two > 42) & (q_two <= 82))[~short.success].all()
    assert (two.loss > short.loss).any()


def test_square_per_example_keys_make_examples_independent(linear_model):
    x, y = _batch(linear_model)
    keys = _keys(9)
    full, q_full = _run_square(linear_model, x, y, keys, 0.01)
    assert 0 < full.success.sum() < 8  # the loop ran past the examples broken early
    # Replace the second half of the batch by other images: the first half is unchanged.
    other, y_other = _batch(linear_model, seed=2)
    x_mixed, y_mixed = np.concatenate([x[:4], other[4:]]), np.concatenate([y[:4], y_other[4:]])
    mixed, q_mixed = _run_square(linear_model, x_mixed, y_mixed, keys, 0.01)
    np.testing.assert_array_equal(mixed.x_adv[:4], full.x_adv[:4])
    np.testing.assert_array_equal(q_mixed[:4], q_full[:4])
    # Reversing the batch (keys with it) reverses the results.
    rev, q_rev = _run_square(linear_model, x[::-1], y[::-1], keys[::-1], 0.01)
    np.testing.assert_array_equal(rev.x_adv[::-1], full.x_adv)
    np.testing.assert_array_equal(q_rev[::-1], q_full)


def test_square_jit_matches_no_jit(linear_model):
    x, y = _batch(linear_model)
    # Linf, two restarts: the eager run equals the shared jitted one (traced eps; its values are
    # exact: x ± eps, clipped).
    jitted, q_jitted = _run_square(
        linear_model, x, y, 4, 0.01, n_queries=40, n_restarts=2, rescale_schedule=False
    )
    attack = square(0.01, steps=40, restarts=2, rescale_schedule=False)
    eager, q_eager = attack.run_with_queries(watched_linear, linear_model[1], x, y, _keys(4))
    np.testing.assert_array_equal(eager.x_adv, jitted.x_adv)
    np.testing.assert_array_equal(q_eager, q_jitted)
    # L2 (default schedule): a traced and a constant radius round differently and the random
    # search amplifies last-bit differences, so compare at the same constant radius.
    attack = square(0.08, steps=30, norm="l2")
    key = jax.random.key(4)
    eager = attack.run(linear_model_fn, linear_model[1], x, y, key)
    jitted = jax.jit(attack.run, static_argnums=0)(linear_model_fn, linear_model[1], x, y, key)
    np.testing.assert_allclose(eager.x_adv, jitted.x_adv, atol=1e-6)
    np.testing.assert_array_equal(eager.success, jitted.success)


def test_square_redraw_unchanged_spends_no_query_on_a_proposal_that_changes_nothing():
    # A black single-channel image at its lower corner x - eps (clipped to 0): a window with the
    # sign "-" reproduces x_best. The default draws the other sign; the reference's behaviour
    # (redraw_unchanged=False) proposes the unchanged point for about half of the draws.
    x = jnp.zeros((8, 8, 1))
    bits = jax.random.bits(jax.random.key(0), (512, 4), jnp.uint32)
    for redraw in (True, False):
        attack = square(0.3, redraw_unchanged=redraw)
        proposals = jax.vmap(attack._propose_linf, in_axes=(0, None, None, None, None))(
            bits, x, x, jnp.int32(2), None
        )
        unchanged = np.asarray(jnp.all(proposals == x, axis=(1, 2, 3)))
        assert set(np.unique(np.asarray(proposals))) <= {0.0, np.float32(0.3)}
        if redraw:
            assert not unchanged.any()
        else:
            assert 0.4 < unchanged.mean() < 0.6, unchanged.mean()


def test_square_matches_torchattacks_success_rate():
    torch = pytest.importorskip("torch")
    torchattacks = pytest.importorskip("torchattacks")
    size, channels, hidden, batch = 16, 3, 32, 128
    rng = np.random.default_rng(7)
    dim = size * size * channels
    w1 = (rng.standard_normal((dim, hidden)) / np.sqrt(dim)).astype(np.float32)
    w2 = rng.standard_normal((hidden, 10)).astype(np.float32)
    x = rng.uniform(0, 1, (batch, size, size, channels)).astype(np.float32)

    def mlp_fn(variables, x):
        h = jax.nn.relu(x.reshape(x.shape[0], -1) @ variables["w1"])
        return h @ variables["w2"]

    y = np.maximum(x.reshape(batch, -1) @ w1, 0).dot(w2).argmax(1)

    class Net(torch.nn.Module):
        def forward(self, images):  # NCHW -> the same NHWC flattening as mlp_fn
            flat = images.permute(0, 2, 3, 1).reshape(images.shape[0], -1)
            return torch.relu(flat @ torch.from_numpy(w1)) @ torch.from_numpy(w2)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: no thread pool spinning
    net = Net().eval()
    x_t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    y_t = torch.from_numpy(y).long()
    eps, budget = 0.03, 50
    peer = torchattacks.Square(net, eps=eps, n_queries=budget, seed=0)
    peer.set_device("cpu")
    adv = peer(x_t, y_t)
    assert float((adv - x_t).abs().max()) <= eps + 1e-6
    peer_rate = float((net(adv).argmax(1) != y_t).float().mean())
    torch.set_num_threads(threads)
    variables = {"w1": w1, "w2": w2}
    ours = square(eps, steps=budget).run(mlp_fn, variables, x, y, jax.random.key(0))
    rate = float(np.mean(ours.success))
    assert 0.2 < peer_rate < 0.8, peer_rate  # the comparison is informative at this budget
    assert peer_rate - 0.1 <= rate <= peer_rate + 0.15, (rate, peer_rate)


# ---------------------------------------------------------------------------------------------
# RayS


@functools.cache
def _rays_fn(model_fn, eps, n_queries, tol=1e-3):
    attack = rays(eps, n_queries, tol=tol)

    def run(variables, x, y):
        _traced_once((model_fn, attack))
        return attack.run_with_queries(model_fn, variables, x, y, jax.random.key(0))

    jitted = jax.jit(run)
    return lambda *args: jax.tree.map(np.asarray, jitted(*args))


def test_rays_finds_the_closed_form_boundary_of_a_binary_linear_model():
    rng = np.random.default_rng(3)
    variables = {"w": rng.standard_normal((64, 2)), "b": np.array([0.3, -0.2])}
    variables = jax.tree.map(np.float32, variables)
    x = rng.uniform(0.3, 0.7, (6, 8, 8, 1)).astype(np.float32)
    y = _np_logits(variables, x).argmax(1).astype(np.int32)
    d = _min_distance(variables, x, y, "linf")
    # Two classes: flipping single coordinates reaches sign(w_j - w_y), the optimal direction.
    # eps = 0 disables the early stop: the search runs the whole budget.
    # A fine tolerance: flips that improve the radius by less than it can be lost.
    result, queries = _rays_fn(linear_model_fn, 0.0, 800, 1e-5)(variables, x, y)
    dist, tol = -result.loss, 1e-5 / 8  # bisection tolerance in Linf units (D = 64)
    assert (dist >= d - 1e-7).all() and (dist <= d + tol + 1e-7).all(), (dist - d) / tol
    assert not result.success.any()
    np.testing.assert_array_equal(result.x_adv, x)
    np.testing.assert_array_equal(queries, 800)


def test_rays_succeeds_below_the_closed_form_distance_and_fails_above(linear_model):
    x, y = _batch(linear_model)
    y[7] = (y[7] + 1) % 10  # already misclassified: success at once, x_adv = x
    variables = linear_model[1]
    d = _min_distance(variables, x, y, "linf")[:7]
    eps = 0.015
    assert (d > eps).any() and (d < eps / 1.2).any()
    result, queries = _rays_fn(linear_model_fn, eps, 2000)(variables, x, y)
    assert result.success[7] and queries[7] == 1 and result.loss[7] == 0.0
    np.testing.assert_array_equal(result.x_adv[7], x[7])
    ok, dist = result.success[:7], -result.loss[:7]
    assert ok[d < eps / 1.2].all() and not ok[d > eps].any()
    assert (dist >= d - 1e-6).all()  # found points are adversarial: never below the minimum
    # Successes: adversarial points within eps, in the box, at the reported distance, found
    # early; failures: x_adv = x after the whole budget.
    gap = _norms(result.x_adv - x, "linf")
    pred = _np_logits(variables, result.x_adv).argmax(1)
    assert (pred != y)[result.success].all() and (pred == y)[~result.success].all()
    np.testing.assert_allclose(gap[:7][ok], dist[ok], atol=1e-6)
    assert (gap[:7][ok] <= eps).all() and (gap[:7][~ok] == 0).all()
    assert ((result.x_adv >= 0) & (result.x_adv <= 1)).all()
    assert (queries[:7][ok] < 2000).all() and (queries[:7][~ok] == 2000).all()

    # Only the predicted label is used: one-hot logits give the same run.
    same, same_queries = _rays_fn(label_only_linear, eps, 2000)(variables, x, y)
    for a, b in zip(same, result, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(same_queries, queries)

    # Examples are independent of the rest of the batch.
    other, y_other = _batch(linear_model, seed=2)
    x_mixed, y_mixed = np.concatenate([other[:4], x[4:]]), np.concatenate([y_other[:4], y[4:]])
    mixed, mixed_queries = _rays_fn(linear_model_fn, eps, 2000)(variables, x_mixed, y_mixed)
    np.testing.assert_array_equal(mixed.x_adv[4:], result.x_adv[4:])
    np.testing.assert_array_equal(mixed_queries[4:], queries[4:])


def test_rays_jit_matches_no_jit_without_retracing_and_targeted(linear_model):
    x, y = _batch(linear_model)
    variables = linear_model[1]
    attack = rays(0.02, steps=300)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(variables, x, y, key):
        return attack.run(linear_model_fn, variables, x, y, key)

    eager = attack.run(linear_model_fn, variables, x, y, jax.random.key(0))
    jitted = run(variables, x, y, jax.random.key(1))
    np.testing.assert_allclose(eager.x_adv, jitted.x_adv, atol=1e-6)
    np.testing.assert_array_equal(eager.success, jitted.success)
    assert np.asarray(eager.success).any()
    for i in range(2):
        run(variables, x + 0.01 * i, (y + i) % 10, jax.random.key(i))

    targets = (y + 1) % 10
    result = rays(0.3, steps=300, targeted=True).run(
        linear_model_fn, variables, x, targets, jax.random.key(0)
    )
    pred = _np_logits(variables, result.x_adv).argmax(1)
    ok = np.asarray(result.success)
    assert ok.any() and (pred[ok] == targets[ok]).all() and (pred[~ok] == y[~ok]).all()


# ---------------------------------------------------------------------------------------------
# Transfer

_PGD = pgd(0.012, 0.003, 5)
_pgd_run = jax.jit(_PGD.run, static_argnums=0)


def _perturbed(variables, scale, seed):
    rng = np.random.default_rng(seed)
    return {
        k: np.asarray(v) + scale * rng.standard_normal(v.shape, np.float32)
        for k, v in variables.items()
    }


def test_transfer_crafts_on_the_surrogate_and_scores_on_the_target(linear_model):
    model_fn, surrogate = linear_model
    x, y = _batch(linear_model)
    key = jax.random.key(2)
    inner = jax.tree.map(np.asarray, _pgd_run(model_fn, surrogate, x, y, key))
    # Targets (vmapped over a stack): the surrogate itself, and two perturbed copies.
    targets = [surrogate] + [_perturbed(surrogate, s, i) for i, s in enumerate((0.5, 3.0))]
    stacked = jax.tree.map(lambda *a: np.stack(a), *targets)
    attack = transfer(_PGD, model_fn)
    vmapped = jax.jit(
        jax.vmap(attack.run, in_axes=(None, (0, None), None, None, None)), static_argnums=0
    )
    results = jax.tree.map(np.asarray, vmapped(model_fn, (stacked, surrogate), x, y, key))
    # Surrogate == target: exactly the inner attack.
    for a, b in zip(jax.tree.map(lambda r: r[0], results), inner, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # Other targets: the same x_adv, with loss (CE, the inner attack's) and success on the target.
    for i, target in enumerate(targets):
        np.testing.assert_allclose(results.x_adv[i], inner.x_adv, atol=1e-6)
        logits = _np_logits(target, inner.x_adv)
        log_p = logits - logits.max(1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
        ce = -np.take_along_axis(log_p, y[:, None], 1)[:, 0]
        np.testing.assert_allclose(results.loss[i], ce, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(results.success[i], logits.argmax(1) != y)
    assert not np.array_equal(results.success[0], results.success[2])


# ---------------------------------------------------------------------------------------------
# Errors


def test_bad_hyperparameters_and_inputs_give_clear_errors(linear_model, images):
    model_fn, variables = linear_model
    x, y = images
    with pytest.raises(ValueError, match="valid norms: linf, l2"):
        square(0.1, norm="l1")
    with pytest.raises(ValueError, match="valid losses: margin, ce"):
        square(0.1, loss="dlr")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        square(-0.1)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        square(0.1, steps=-5)
    with pytest.raises(ValueError, match="restarts must be a positive integer"):
        square(0.1, restarts=0)
    with pytest.raises(ValueError, match=r"p_init must be in \(0, 1\]"):
        square(0.1, p_init=1.5)
    with pytest.raises(TypeError, match="labels must be integers"):
        square(0.1, steps=1).run(model_fn, variables, x, y.astype(float), jax.random.key(0))
    with pytest.raises(ValueError, match="NCHW"):
        square(0.1).run(model_fn, variables, jnp.zeros((2, 1, 8, 8)), y[:2], jax.random.key(0))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        rays(-1.0)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        rays(0.1, steps=0)
    with pytest.raises(ValueError, match="tol must be > 0"):
        rays(0.1, tol=0.0)
    with pytest.raises(ValueError, match="integer labels"):
        rays(0.1).run(model_fn, variables, x, jnp.zeros((6, 10)), jax.random.key(0))
    with pytest.raises(TypeError, match="advjax Attack"):
        transfer(lambda *a: a, model_fn)
    with pytest.raises(ValueError, match="valid losses"):
        transfer(pgd(0.1, 0.01, 1), model_fn, loss="nope")
    with pytest.raises(TypeError, match=r"\(target_variables, surrogate_variables\)"):
        transfer(pgd(0.1, 0.01, 1), model_fn).run(model_fn, variables, x, y, jax.random.key(0))
    assert isinstance(transfer(pgd(0.1, 0.01, 1), model_fn), Attack)
