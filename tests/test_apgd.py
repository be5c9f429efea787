"""APGD / APGD-T: the reference's schedule, closed forms on linear models, step-size halving,
invariants, jit / per-example keys / no retracing, EoT, and a cross-check with torchattacks.

Compiling dominates the cost of these tests: jitted calls go through ``_run`` / ``_trace`` (one
cache keyed on the attack, XLA backend optimisation off: these models are tiny) and test data comes
from NumPy.
"""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import losses
from advjax.attacks import autopgd as apgd_lib
from advjax.attacks.autopgd import (
    APGD,
    APGDTargeted,
    apgd,
    apgd_t,
    apgd_targets,
    checkpoint_schedule,
    halving_condition,
)
from advjax.attacks.base import MODEL_KEY, with_model_key
from advjax.threats import LpBall
from tests.conftest import linear_model_fn

KEY = jax.random.key(0)


_FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.partial(jax.jit, static_argnums=(0, 1), compiler_options=_FAST_COMPILE)
def _run(attack, model_fn, variables, x, y, key):
    return attack.run(model_fn, variables, x, y, key)


@functools.partial(jax.jit, static_argnums=(0, 1), compiler_options=_FAST_COMPILE)
def _trace(attack, model_fn, variables, x, y, x_init):
    return attack.trace(model_fn, variables, x, y, KEY, x_init=x_init)


def _uniform(seed, shape, lo=0.0, hi=1.0):
    return jnp.asarray(np.random.RandomState(seed).uniform(lo, hi, shape), jnp.float32)


def _linear10():
    rng = np.random.RandomState(0)
    return {"w": jnp.asarray(rng.randn(64, 10), jnp.float32), "b": jnp.zeros(10)}


def _reference_checkpoints(n_iter: int) -> list[int]:
    """The reference loop's counters (autopgd_base.py: counter3 == k, k shrinks by size_decr)."""
    k = max(int(0.22 * n_iter), 1)
    n_iter_min, size_decr = max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)
    points, counter3 = [], 0
    for i in range(n_iter):
        counter3 += 1
        if counter3 == k:
            points.append(i + 1)
            counter3 = 0
            k = max(k - size_decr, n_iter_min)
    return points


def test_checkpoint_schedule_matches_reference_and_paper():
    assert checkpoint_schedule(100) == (22, 41, 57, 70, 80, 87, 93, 99)
    # Paper: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    assert [round(100 * q) for q in p[1:]] == list(checkpoint_schedule(100))
    for n_iter in [1, 2, 5, 10, 37, 50, 99, 100, 101, 250, 1000]:
        assert list(checkpoint_schedule(n_iter)) == _reference_checkpoints(n_iter), n_iter
    assert checkpoint_schedule(100, "l2") == checkpoint_schedule(100)
    assert checkpoint_schedule(100, "l1") == tuple(range(4, 101, 4))
    assert checkpoint_schedule(20, "l1") == tuple(range(1, 21))


def test_halving_condition_both_conditions():
    f, t = False, True
    got = halving_condition(
        increases=jnp.array([16.0, 17.0, 17.0, 17.0, 17.0, 15.0]),
        threshold=jnp.array([16.5, 16.5, 16.5, 16.5, 16.5, 15.0]),  # rho * window: 0.75 * 22, 20
        reduced_last=jnp.array([t, t, f, f, t, t]),
        best_at_last_check=jnp.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
        best=jnp.array([2.0, 1.0, 1.0, 1.5, 1.0, 2.0]),
    )
    # 1: few increases; 2: enough increases, reduced last time; 3: not reduced + no improvement;
    # 4: not reduced but improved; 5: reduced last time, no improvement -> no condition holds;
    # 6: increases == rho * window still halves (the reference's ``<=``).
    np.testing.assert_array_equal(got, [t, f, t, f, f, t])


def _margin_model(x, eps, norm):
    """Logits ``[0, u.x + c, -100]``: CE and DLR (``= z_1 / 100`` while ``z_1 < 0``) both increase
    with ``u.x``, so both are maximised at the maximiser of ``u.x`` over the ball ∩ box. ``c``
    keeps ``z_1 < 0`` there (no example is fooled, so APGD returns its maximum-loss point)."""
    u = np.random.RandomState(7).randn(64).astype(np.float32)
    xf = np.asarray(x).reshape(x.shape[0], -1)
    if norm == "linf":
        best = np.clip(xf + eps * np.sign(u), 0.0, 1.0)
    elif norm == "l2":  # the box is inactive for these images and eps
        best = xf + eps * u / np.linalg.norm(u)
    else:  # greedy: move the largest |u_i| to their box bound until the budget is spent
        best = xf.copy()
        for row in best:
            budget = eps
            for i in np.argsort(-np.abs(u)):
                move = min(1.0 - row[i] if u[i] > 0 else row[i], budget)
                row[i] += move * np.sign(u[i])
                budget -= move
    w = np.zeros((64, 3), np.float32)
    w[:, 1] = u
    c = -float(np.max(best @ u)) - 1.0
    variables = {"w": jnp.asarray(w), "b": jnp.array([0.0, c, -100.0])}
    return variables, jnp.asarray(best.reshape(x.shape), jnp.float32)


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_linf_reaches_closed_form(loss):
    x = _uniform(5, (4, 8, 8, 1))  # many coordinates end at the box
    y = jnp.zeros(4, jnp.int32)
    eps = 0.3
    variables, optimum = _margin_model(x, eps, "linf")
    result = _run(apgd(eps, loss=loss), linear_model_fn, variables, x, y, KEY)
    assert not bool(jnp.any(result.success))
    np.testing.assert_allclose(result.x_adv, optimum, atol=1e-6)
    expected = losses.get_loss(loss)(linear_model_fn(variables, optimum), y)
    np.testing.assert_allclose(result.loss, expected, rtol=1e-6)
    assert bool(jnp.all(LpBall("linf", eps).contains(result.x_adv, x)))


def test_step_size_halves_exactly_at_the_checkpoints():
    # From x, the first step (2 eps, no momentum) lands on the optimum of the margin model and the
    # loss stays flat: every check finds too few increases, so the step halves at each checkpoint
    # (and only there) and the run restarts from x_max.
    x = _uniform(5, (4, 8, 8, 1))
    y = jnp.zeros(4, jnp.int32)
    eps = 0.3
    variables, optimum = _margin_model(x, eps, "linf")
    trace = _trace(apgd(eps), linear_model_fn, variables, x, y, x)
    np.testing.assert_allclose(trace.x_best, optimum, atol=1e-6)
    np.testing.assert_allclose(trace.losses[1:], trace.losses[:-1], rtol=1e-6)
    checks = np.zeros(100, bool)
    checks[np.array(checkpoint_schedule(100)) - 1] = True
    expected = 2 * eps / 2.0 ** np.concatenate([[0], np.cumsum(checks)[:-1]])
    np.testing.assert_allclose(trace.step_sizes, np.repeat(expected[:, None], 4, 1), rtol=1e-6)
    np.testing.assert_array_equal(trace.restarts, np.repeat(checks[:, None], 4, 1))


@pytest.mark.parametrize(
    "attack,tol",
    [
        (apgd(0.5, norm="l2"), 1e-4),
        (apgd(1.0, norm="l1"), 2e-2),
        (apgd(1.0, norm="l1", use_largereps=True, steps=50), 2e-2),
    ],
    ids=["l2", "l1", "l1_largereps"],
)
def test_l2_and_l1_reach_closed_form(attack, tol):
    x = _uniform(1, (4, 8, 8, 1), 0.2, 0.8)
    y = jnp.zeros(4, jnp.int32)
    variables, optimum = _margin_model(x, attack.eps, attack.norm)
    result = _run(attack, linear_model_fn, variables, x, y, KEY)
    assert bool(jnp.all(LpBall(attack.norm, attack.eps).contains(result.x_adv, x)))
    margin = linear_model_fn(variables, result.x_adv)[:, 1]
    best = linear_model_fn(variables, optimum)[:, 1]
    clean = linear_model_fn(variables, x)[:, 1]
    # The gain over the clean point, relative to the optimal gain eps * ||u||_dual (box-aware).
    np.testing.assert_allclose((margin - clean) / (best - clean), 1.0, atol=tol)


def _tiny_cnn():
    """conv 3x3 (8) -> ReLU -> conv 3x3 stride 2 (16) -> ReLU -> dense 10, on 8x8x1 images."""
    rng = np.random.RandomState(3)
    return {
        "c1": jnp.asarray(rng.randn(3, 3, 1, 8) * np.sqrt(2 / 9), jnp.float32),
        "c2": jnp.asarray(rng.randn(3, 3, 8, 16) * np.sqrt(2 / 72), jnp.float32),
        "w": jnp.asarray(rng.randn(16 * 16, 10) * np.sqrt(1 / 256), jnp.float32),
        "b": jnp.asarray(rng.randn(10) * 0.1, jnp.float32),
    }


def cnn_fn(variables, x):
    dims = ("NHWC", "HWIO", "NHWC")
    h = jax.lax.conv_general_dilated(x, variables["c1"], (1, 1), "SAME", dimension_numbers=dims)
    h = jax.nn.relu(h)
    h = jax.lax.conv_general_dilated(h, variables["c2"], (2, 2), "SAME", dimension_numbers=dims)
    h = jax.nn.relu(h)
    return 10.0 * (h.reshape(h.shape[0], -1) @ variables["w"] + variables["b"])


@functools.partial(jax.jit, static_argnums=(0, 5, 6), compiler_options=_FAST_COMPILE)
def _pgd_best_loss(model_fn, variables, x, y, x0, eps, steps):
    """Linf PGD with step eps / 4 from ``x0``; the best CE loss over its iterates, per example."""
    ball = LpBall("linf", eps)
    grad_fn = jax.grad(
        lambda v: jnp.sum(losses.cross_entropy(model_fn(variables, v), y)), has_aux=False
    )

    def step(carry, _):
        x_adv, best = carry
        best = jnp.maximum(best, losses.cross_entropy(model_fn(variables, x_adv), y))
        x_adv = ball.project(x_adv + eps / 4 * jnp.sign(grad_fn(x_adv)), x)
        return (x_adv, best), None

    (x_last, best), _ = jax.lax.scan(step, (x0, jnp.full(x.shape[0], -jnp.inf)), None, steps)
    return jnp.maximum(best, losses.cross_entropy(model_fn(variables, x_last), y))


def test_apgd_at_least_as_strong_as_pgd_on_a_cnn():
    variables = _tiny_cnn()
    x = _uniform(11, (8, 8, 8, 1))
    y = jnp.argmax(cnn_fn(variables, x), -1)
    eps, n_iter = 0.1, 50
    x0 = jnp.clip(x + _uniform(12, x.shape, -eps, eps), 0.0, 1.0)  # the same start for both
    pgd_best = _pgd_best_loss(cnn_fn, variables, x, y, x0, eps, n_iter)
    trace = _trace(apgd(eps, steps=n_iter), cnn_fn, variables, x, y, x0)
    # The best CE over the iterates, per example: APGD never lower, and higher on average.
    assert bool(jnp.all(trace.loss_best >= pgd_best)), (trace.loss_best, pgd_best)
    assert float(jnp.mean(trace.loss_best / pgd_best)) > 1.005


def test_apgd_t_targets_success_and_per_example_keys():
    variables = _linear10()
    x = _uniform(2, (6, 8, 8, 1), 0.2, 0.8)
    logits = linear_model_fn(variables, x)
    y = jnp.argmax(logits, -1).at[5].set((jnp.argmax(logits[5]) + 1) % 10)  # 5: already wrong
    order = np.argsort(-np.asarray(logits), axis=1)
    np.testing.assert_array_equal(apgd_targets(logits, 3), order[:, 1:4])

    attack = apgd_t(0.05, steps=10, num_targets=3, restarts=2)
    keys = jax.random.split(KEY, 6)
    result = _run(attack, linear_model_fn, variables, x, y, keys)
    fooled = jnp.argmax(linear_model_fn(variables, result.x_adv), -1) != y
    np.testing.assert_array_equal(result.success, fooled)  # untargeted success, as the reference
    assert 0 < int(jnp.sum(result.success)) < 6
    np.testing.assert_array_equal(result.x_adv[5], x[5])  # misclassified points stay clean
    assert bool(jnp.all(LpBall("linf", 0.05).contains(result.x_adv, x)))

    perm = np.array([3, 0, 5, 1, 4, 2])
    permuted = _run(attack, linear_model_fn, variables, x[perm], y[perm], keys[perm])
    for a, b in zip(permuted, result, strict=True):
        np.testing.assert_allclose(a, b[perm], atol=1e-6)

    # Later targets run only on the points still robust, compacted into smaller static buckets
    # (as AutoAttack does): with per-example keys the outcome does not change.
    compacted = dataclasses.replace(attack, buckets=(1.0, 0.5, 0.25))
    for a, b in zip(_run(compacted, linear_model_fn, variables, x, y, keys), result, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_jit_matches_no_jit_and_no_recompilation():
    variables = _linear10()
    x = _uniform(4, (3, 8, 8, 1), 0.2, 0.8)
    y = jnp.argmax(linear_model_fn(variables, x), -1)
    attack = apgd(0.1, norm="l2", steps=3)
    eager = attack.run(linear_model_fn, variables, x, y, KEY)
    jitted = _run(attack, linear_model_fn, variables, x, y, KEY)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)

    @functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
    @chex.assert_max_traces(n=1)
    def run(variables, x, y, key):
        return attack(linear_model_fn, variables, x, y, key)

    for i in range(3):
        run(variables, x + 0.0 * i, y, jax.random.key(i))


def noisy_linear_fn(variables, x):
    """A randomised model: Gaussian input noise drawn from ``variables[MODEL_KEY]``."""
    noise = 0.2 * jax.random.normal(variables[MODEL_KEY], x.shape)
    return linear_model_fn(variables, x + noise)


def test_eot_averages_gradients_over_model_draws():
    variables = _linear10()
    x = _uniform(6, (4, 8, 8, 1), 0.2, 0.8)
    y = jnp.argmax(linear_model_fn(variables, x), -1)
    draws = jax.random.split(jax.random.key(9), 3)

    @functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
    def eot_and_by_hand(variables, x, y, draws):
        evaluator = apgd_lib._Evaluator(noisy_linear_fn, variables, losses.cross_entropy, y, 3)

        def one(key):
            v = with_model_key(variables, key)
            objective = lambda z: jnp.sum(losses.cross_entropy(noisy_linear_fn(v, z), y))  # noqa: E731
            return jax.grad(objective)(x), losses.cross_entropy(noisy_linear_fn(v, x), y)

        return evaluator.grad(x, draws), jax.vmap(one)(draws)

    (grad, loss, _), (grads, draw_losses) = eot_and_by_hand(variables, x, y, draws)
    np.testing.assert_allclose(grad, jnp.mean(grads, 0), atol=1e-5)
    np.testing.assert_allclose(loss, draw_losses[-1], rtol=1e-6)  # the last draw's (reference)
    assert float(jnp.max(jnp.abs(grads[0] - grads[1]))) > 1e-3  # the draws do differ

    # With per-example keys every example draws its own model noise: batch independent.
    attack = apgd(0.05, steps=5, eot_samples=3)
    keys = jax.random.split(KEY, 4)
    result = _run(attack, noisy_linear_fn, variables, x, y, keys)
    perm = np.array([2, 0, 3, 1])
    permuted = _run(attack, noisy_linear_fn, variables, x[perm], y[perm], keys[perm])
    np.testing.assert_allclose(permuted.x_adv, result.x_adv[perm], atol=1e-6)
    assert bool(jnp.all(LpBall("linf", 0.05).contains(result.x_adv, x)))
    with pytest.raises(TypeError, match="dict variables"):
        apgd(0.05, steps=2, eot_samples=2).run(lambda v, z: z[:, 0, 0, :], [1.0], x, 0 * y, KEY)


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="eps must be >= 0"):
        apgd(-0.1)
    with pytest.raises(ValueError, match="eps is required"):
        apgd(None)
    with pytest.raises(ValueError, match="valid norms"):
        apgd(0.1, norm="l3")
    with pytest.raises(ValueError, match="valid losses: ce, dlr"):
        apgd(0.1, loss="margin")
    with pytest.raises(ValueError, match="valid losses: dlr, ce"):
        apgd_t(0.1, loss="kl")
    for name in ("steps", "restarts", "eot_samples"):
        with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
            apgd(0.1, **{name: 0})
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        apgd(0.1, steps=2.5)
    with pytest.raises(ValueError, match="rho must be in"):
        apgd(0.1, rho=1.5)
    with pytest.raises(ValueError, match="L1 norm only"):
        apgd(0.1, use_largereps=True)
    with pytest.raises(ValueError, match="num_targets must be a positive integer"):
        apgd_t(0.1, num_targets=0)

    variables = _linear10()
    x = _uniform(0, (2, 8, 8, 1))
    y = jnp.array([1, 2])
    with pytest.raises(TypeError, match="labels must be integers"):
        apgd(0.1, steps=2).run(linear_model_fn, variables, x, y.astype(jnp.float32), KEY)
    with pytest.raises(ValueError, match="at least 11 classes"):
        apgd_t(0.1, steps=2, num_targets=10).run(linear_model_fn, variables, x, y, KEY)
    two = {"w": variables["w"][:, :2], "b": variables["b"][:2]}
    with pytest.raises(ValueError, match="at least 3 classes"):
        apgd(0.1, loss="dlr", steps=2).run(linear_model_fn, two, x, y % 2, KEY)
    with pytest.raises(ValueError, match="NCHW"):
        apgd(0.1, steps=2).run(linear_model_fn, variables, jnp.zeros((2, 1, 8, 8)), y, KEY)


def test_factories_and_scaled():
    attack = apgd(8 / 255)
    assert isinstance(attack, APGD)
    assert (attack.norm, attack.loss, attack.steps, attack.restarts, attack.rho) == (
        "linf",
        "ce",
        100,
        1,
        0.75,
    )
    assert attack.eot_samples == 1 and hash(attack) == hash(apgd(8 / 255))
    targeted = apgd_t(0.5, norm="l2")
    assert isinstance(targeted, APGDTargeted)
    assert (targeted.loss, targeted.num_targets, targeted.steps) == ("dlr", 9, 100)
    assert attack.scaled(2.0) == apgd(16 / 255)
    assert targeted.scaled(0.5).eps == 0.25


def mlp_fn(variables, x):
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ variables["w1"] + variables["b1"])
    return h @ variables["w2"] + variables["b2"]


def test_matches_torchattacks_apgd():
    """Same weights, same start: advjax's APGD-CE retraces torchattacks' (a port of the reference)
    step for step; from its own random start it is not weaker on the same points."""
    torch = pytest.importorskip("torch")
    torchattacks = pytest.importorskip("torchattacks")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: extra threads only spin against XLA's (50x slower)
    try:
        _check_against_torchattacks(torch, torchattacks)
    finally:
        torch.set_num_threads(threads)


def _check_against_torchattacks(torch, torchattacks):
    rng = np.random.RandomState(0)
    weights = {
        "w1": rng.randn(64, 32).astype(np.float32) * 0.5,
        "b1": rng.randn(32).astype(np.float32) * 0.1,
        "w2": rng.randn(32, 10).astype(np.float32) * 0.5,
        "b2": rng.randn(10).astype(np.float32) * 0.1,
    }
    variables = {k: jnp.asarray(w) for k, w in weights.items()}
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )
    with torch.no_grad():
        for layer, w, b in [(net[1], "w1", "b1"), (net[3], "w2", "b2")]:
            layer.weight.copy_(torch.from_numpy(weights[w].T.copy()))
            layer.bias.copy_(torch.from_numpy(weights[b]))
    net.eval()
    x = rng.uniform(0, 1, (16, 8, 8, 1)).astype(np.float32)
    x[:, :2] = rng.randint(0, 2, (16, 2, 8, 1))  # saturated pixels: the box is active
    y = np.argmax(np.asarray(mlp_fn(variables, jnp.asarray(x))), -1)  # all correct at x
    x_t, y_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y)
    eps = 0.05
    atk = torchattacks.APGD(net, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", seed=0)

    # torchattacks' start: x + eps * t / ||t||_inf, t = 2 U - 1 from torch's global generator.
    torch.manual_seed(0)
    t = 2 * torch.rand(x_t.shape) - 1
    start = (x_t + eps * t / t.reshape(16, -1).abs().max(1)[0].view(-1, 1, 1, 1)).clamp(0, 1)
    torch.manual_seed(0)
    loss_t, best_t = atk.perturb(x_t, y_t, best_loss=True)
    x_init = jnp.asarray(start.numpy().transpose(0, 2, 3, 1))
    trace = _trace(apgd(eps), mlp_fn, variables, jnp.asarray(x), jnp.asarray(y), x_init)
    # The same best points and losses. A coordinate whose gradient is near zero takes its sign from
    # float noise, which differs between CPUs (on an Intel Xeon, 1 of the 1,024 coordinates moved
    # by 1e-4 with the loss equal to 3e-7): allow one such coordinate in a thousand.
    off = np.abs(np.asarray(trace.x_best) - best_t.numpy().transpose(0, 2, 3, 1)) > 1e-5
    assert off.mean() <= 1e-3, (off.sum(), np.nonzero(off.reshape(len(x), -1).any(1))[0])
    np.testing.assert_allclose(trace.loss_best, loss_t.numpy(), rtol=1e-5)

    adv_t = atk(x_t, y_t)
    robust_t = int((net(adv_t).argmax(1) == y_t).sum())
    result = _run(apgd(eps), mlp_fn, variables, jnp.asarray(x), jnp.asarray(y), KEY)
    robust = int(jnp.sum(~result.success))
    assert 0 < robust_t < 16
    assert robust <= robust_t, (robust, robust_t)
