"""UDR (thesis Ch. 5): the costs ĉ and their corrected gradients against closed forms, the pull
step (Eq. 29), the hard-ball limit equal to PGD (Theorem 1), the soft-ball steady state (spec Sec.
4.5), and the learned lambda (Eq. 19) against NumPy, directly and through the train step."""

from __future__ import annotations

from types import SimpleNamespace

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from advjax import attacks, losses
from advjax.attacks.udr import (
    ground_cost_grad,
    ground_cost_value,
    pull_back,
    soft_cost,
    soft_cost_grad,
    squared_hinge_cost,
    squared_hinge_grad,
    udr,
)
from advjax.defenses import Adversary, Defense
from advjax.defenses.core import CLEAN
from advjax.defenses.terms import CrossEntropy
from advjax.defenses.udr_state import (
    LAMBDA,
    LambdaFromState,
    UDRLambda,
    bind_lambda,
    distance_statistic,
    udr_lambda,
)
from advjax.models import init_variables, make_model_fn
from advjax.train import create_train_state, make_mesh, replicate, shard_batch
from advjax.train.step import train_step
from tests.conftest import linear_model_fn

EPS, ETA = 0.1, 0.02


def _pair(seed=0, batch=5, shape=(4, 4, 1), spread=0.3):
    """(x', x) with distinct, non-zero ``|x' - x|`` (no ties for the Linf argmax)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.3, 0.7, (batch, *shape))
    n = int(np.prod(shape))
    scales = np.linspace(0.5, 1.0, batch)[:, None] * spread / n  # a distinct cost per example
    magnitudes = np.stack([rng.permutation(n) + 1.0 for _ in range(batch)]) * scales
    signs = rng.choice([-1.0, 1.0], (batch, n))
    delta = (signs * magnitudes).reshape(batch, *shape)
    return jnp.asarray(x + delta, jnp.float32), jnp.asarray(x, jnp.float32)


def _numpy_ground(x_adv, x, kind):
    d = np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)
    flat = d.reshape(len(d), -1)
    if kind == "l1":
        return np.abs(flat).sum(1), np.sign(d)
    if kind == "l2":
        return 0.5 * (flat**2).sum(1), d
    grad = np.zeros_like(flat)
    j = np.abs(flat).argmax(1)
    grad[np.arange(len(d)), j] = np.sign(flat[np.arange(len(d)), j])
    return np.abs(flat).max(1), grad.reshape(d.shape)


# ----------------------------------------------------------------------------------------------
# Costs


@pytest.mark.parametrize("kind", ["l1", "l2", "linf"])
def test_ground_costs_and_gradients_are_the_corrected_closed_forms(kind):
    x_adv, x = _pair()
    value, grad = _numpy_ground(x_adv, x, kind)
    np.testing.assert_allclose(ground_cost_value(x_adv, x, kind), value, rtol=1e-5)
    np.testing.assert_allclose(ground_cost_grad(x_adv, x, kind), grad, atol=1e-6)
    autodiff = jax.grad(lambda z: jnp.sum(ground_cost_value(z, x, kind)))(x_adv)
    np.testing.assert_allclose(ground_cost_grad(x_adv, x, kind), autodiff, atol=1e-6)
    # Table 11 as printed is wrong (spec P2): the L2 gradient is a vector, the Linf one is signed.
    if kind == "l2":
        assert not np.allclose(grad, grad.reshape(len(grad), -1).sum(1)[:, None, None, None])
    if kind == "linf":
        assert (grad < 0).any() and (np.abs(grad).reshape(len(grad), -1).sum(1) == 1).all()


@pytest.mark.parametrize("kind", ["l1", "l2", "linf"])
def test_soft_cost_is_eq16_with_slope_one_inside_and_one_over_tau_outside(kind):
    tau = 0.25
    x_adv, x = _pair(1)
    c, grad_c = _numpy_ground(x_adv, x, kind)
    eps = float(np.sort(c)[1:3].mean())  # two examples inside the ball, three outside
    inside = c < eps
    assert inside.any() and (~inside).any()
    expected = np.where(inside, c, eps + (c - eps) / tau)
    np.testing.assert_allclose(soft_cost(x_adv, x, eps, tau, kind), expected, rtol=1e-5)
    slope = np.where(inside, 1.0, 1.0 / tau)[:, None, None, None]
    got = soft_cost_grad(x_adv, x, eps, tau, kind)
    np.testing.assert_allclose(got, slope * grad_c, rtol=1e-5, atol=1e-6)
    autodiff = jax.grad(lambda z: jnp.sum(soft_cost(z, x, eps, tau, kind)))(x_adv)
    np.testing.assert_allclose(got, autodiff, rtol=1e-5, atol=1e-6)
    # Continuous at the sphere; the hard-ball cost (Eq. 13) as tau -> 0.
    on_sphere = x + (x_adv - x) * (eps / c)[:, None, None, None] ** (0.5 if kind == "l2" else 1)
    np.testing.assert_allclose(soft_cost(on_sphere, x, eps, tau, kind), eps, rtol=1e-4)
    hard = np.asarray(soft_cost(x_adv, x, eps, 1e-12, kind))
    np.testing.assert_allclose(hard[inside], c[inside], rtol=1e-5)
    assert (hard[~inside] > 1e9).all()


def test_squared_hinge_cost_is_zero_inside_the_linf_box():
    tau = 0.05
    x_adv, x = _pair(2)
    d = np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)
    excess = np.sign(d) * np.maximum(np.abs(d) - EPS, 0.0)
    assert (excess == 0).any() and (excess != 0).any()
    expected = (excess**2).reshape(len(d), -1).sum(1) / (2 * tau)
    np.testing.assert_allclose(squared_hinge_cost(x_adv, x, EPS, tau), expected, rtol=1e-5)
    got = squared_hinge_grad(x_adv, x, EPS, tau)
    np.testing.assert_allclose(got, excess / tau, atol=1e-5)
    autodiff = jax.grad(lambda z: jnp.sum(squared_hinge_cost(z, x, EPS, tau)))(x_adv)
    np.testing.assert_allclose(got, autodiff, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# The pull step


@pytest.mark.parametrize("outside", [False, True])
def test_l2_pull_is_eq29_convex_interpolation_back_to_x(outside):
    lam, tau = 3.0, 0.5
    x_inter, x = _pair(3, spread=0.2)
    c = 0.5 * np.sum((np.asarray(x_inter) - np.asarray(x)) ** 2, axis=(1, 2, 3))
    eps = float(c.min()) / 2 if outside else float(c.max()) * 2  # every example out / in
    factor = ETA * lam / (tau if outside else 1.0)
    expected = (1 - factor) * np.asarray(x_inter) + factor * np.asarray(x)  # Eq. 29
    got = pull_back(
        x_inter, x, eps=eps, step_size=ETA, lam=lam, tau=tau, cost="soft", ground_cost="l2"
    )
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize(("lam", "tau", "cap", "kept"), [
    (0.5, ETA, True, 0.5),  # kappa = 0.5: half of each pixel's excess stays
    (1.0, ETA, True, 0.0),  # kappa = 1: the Linf projection
    (3.0, ETA, True, 0.0),  # kappa = 3, capped: the projection
    (1.5, ETA, False, -0.5),  # the released code's rule: reflected inside the ball
])  # fmt: skip
def test_squared_hinge_pull_keeps_one_minus_kappa_of_the_excess(lam, tau, cap, kept):
    x_inter, x = _pair(4)
    d = np.asarray(x_inter, np.float64) - np.asarray(x, np.float64)
    excess = np.sign(d) * np.maximum(np.abs(d) - EPS, 0.0)
    got = pull_back(x_inter, x, eps=EPS, step_size=ETA, lam=lam, tau=tau, cap_pull=cap)
    np.testing.assert_allclose(
        np.asarray(got) - np.asarray(x), d - excess + kept * excess, atol=2e-6
    )


# ----------------------------------------------------------------------------------------------
# The attack


@pytest.mark.parametrize("keep_best", [False, True])
def test_hard_ball_limit_is_pgd_bit_for_bit(linear_model, images, keep_best):
    # Theorem 1 (Eq. 14-15): tau -> 0 (or lam eta >= tau, or the code's lam = 1, tau = eta) is
    # the hard ball, and the adversary is advjax's Linf PGD from the same random start.
    model_fn, variables = linear_model
    x, y = images
    x = x.at[0, :2].set(0.0).at[1, :2].set(1.0)  # pixels on the box's faces
    pgd = attacks.pgd(EPS, ETA, 6, keep_best=keep_best)
    for key in (jax.random.key(3), jax.random.split(jax.random.key(4), x.shape[0])):
        expected = pgd.run(model_fn, variables, x, y, key)
        for lam, tau in [(1.0, None), (0.3, 0.0), (0.3, 1e-9), (5.0, ETA)]:
            attack = udr(EPS, ETA, 6, lam=lam, tau=tau, keep_best=keep_best)
            got = attack.run(model_fn, variables, x, y, key)
            for a, b in zip(got, expected, strict=True):
                np.testing.assert_array_equal(a, b)
    assert float(jnp.max(jnp.abs(got.x_adv - x))) > 0.9 * EPS
    softer = udr(EPS, ETA, 6, lam=0.3, keep_best=keep_best).run(model_fn, variables, x, y, key)
    assert float(jnp.max(jnp.abs(softer.x_adv - x))) > EPS + ETA  # lam < 1: not the hard ball


def _two_class(num_pixels=16):
    """A 2-class linear model: the CE gradient's sign, ``sign(w_1 - w_0)`` for label 0, is the
    same at every point (spec Sec. 4.5's assumption)."""
    w = jax.random.normal(jax.random.key(7), (num_pixels, 2))
    return {"w": w, "b": jnp.zeros(2)}


@pytest.mark.parametrize(("lam", "tau"), [(0.5, ETA), (1.0, 2 * ETA), (0.8, ETA)])
def test_soft_ball_steady_state_excess_is_tau_over_lambda_minus_eta(lam, tau):
    variables = _two_class()
    x = jnp.full((3, 4, 4, 1), 0.5)
    y = jnp.zeros(3, jnp.int32)
    attack = udr(EPS, ETA, 50, lam=lam, tau=tau, unroll=1)
    x_adv = jax.jit(attack, static_argnums=0)(linear_model_fn, variables, x, y, jax.random.key(0))
    excess = tau / lam - ETA  # e* = eta (1 - kappa) / kappa
    direction = np.sign(np.asarray(variables["w"][:, 1] - variables["w"][:, 0])).reshape(4, 4, 1)
    np.testing.assert_allclose(
        x_adv - x, np.broadcast_to(direction * (EPS + excess), x.shape), atol=1e-5
    )


@pytest.mark.parametrize(("ground", "eps"), [("linf", EPS), ("l1", 0.3)])
def test_soft_cost_attack_is_algorithm_1_in_numpy(ground, eps):
    # Algorithm 1 with Eq. 16, step by step in NumPy, on a model with a constant gradient sign.
    variables = _two_class(4)
    x = jax.random.uniform(jax.random.key(3), (4, 2, 2, 1), minval=0.1, maxval=0.9)
    key, lam, tau = jax.random.key(4), 0.7, 2 * ETA
    x_adv = udr(eps, ETA, 8, lam=lam, cost="soft", ground_cost=ground, tau=tau)(
        linear_model_fn, variables, x, jnp.zeros(4, jnp.int32), key
    )
    w = np.asarray(variables["w"], np.float64)
    direction = np.sign(w[:, 1] - w[:, 0]).reshape(2, 2, 1)
    xs = np.asarray(x, np.float64)
    z = np.asarray(attacks.pgd(eps, ETA, 1).threat.init(key, x), np.float64)
    inside = []
    for _ in range(8):
        inter = z + ETA * direction  # push
        c, grad_c = _numpy_ground(inter, xs, ground)
        inside.extend(c < eps)
        slope = np.where(c < eps, 1.0, 1.0 / tau)[:, None, None, None]
        z = np.clip(inter - ETA * lam * slope * grad_c, 0.0, 1.0)  # pull, box
    assert any(inside) and not all(inside)  # both sides of the sphere were visited
    np.testing.assert_allclose(x_adv, z, atol=1e-5)


def test_lambda_zero_is_unconstrained_sign_ascent_in_the_box():
    variables = _two_class()
    x = jax.random.uniform(jax.random.key(1), (3, 4, 4, 1))
    y = jnp.zeros(3, jnp.int32)
    key = jax.random.key(2)
    x_adv = udr(EPS, ETA, 10, lam=0.0)(linear_model_fn, variables, x, y, key)
    start = attacks.pgd(EPS, ETA, 1).threat.init(key, x)
    direction = np.sign(np.asarray(variables["w"][:, 1] - variables["w"][:, 0])).reshape(4, 4, 1)
    np.testing.assert_allclose(x_adv, np.clip(start + 10 * ETA * direction, 0, 1), atol=1e-6)
    assert float(jnp.max(jnp.abs(x_adv - x))) > 2 * EPS


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lam=3.0, cap_pull=False),
        dict(lam=50.0, cost="soft", ground_cost="linf", tau=1e-3),
        dict(lam=50.0, cost="soft", ground_cost="l1", tau=1e-3),
        dict(lam=0.0, cost="soft", ground_cost="l2"),
    ],
)
def test_adversary_stays_in_the_box(linear_model, kwargs):
    model_fn, variables = linear_model
    x = jax.random.bernoulli(jax.random.key(5), 0.5, (6, 8, 8, 1)).astype(jnp.float32)
    x = x.at[:, :, :4].set(jax.random.uniform(jax.random.key(6), (6, 8, 4, 1)))
    x_adv = udr(0.3, 0.1, 5, **kwargs)(model_fn, variables, x, jnp.arange(6), jax.random.key(0))
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float(jnp.max(jnp.abs(x_adv - x))) > 0.0


def test_jit_equals_no_jit_and_a_traced_lambda_compiles_once(linear_model, images):
    model_fn, variables = linear_model
    x, y = images
    key = jax.random.key(8)
    attack = udr(EPS, ETA, 5, cost="soft", ground_cost="l2", tau=0.5)
    eager = attack(model_fn, variables, x, y, key)
    np.testing.assert_allclose(
        jax.jit(attack, static_argnums=0)(model_fn, variables, x, y, key), eager, atol=1e-6
    )

    @jax.jit
    @chex.assert_max_traces(n=1)
    def with_lambda(lam):
        return attack.with_lambda(lam)(model_fn, variables, x, y, key)

    outputs = [with_lambda(lam) for lam in (0.0, 1.0, 20.0)]
    np.testing.assert_allclose(outputs[1], eager, atol=1e-6)
    np.testing.assert_allclose(
        outputs[2], attack.with_lambda(20.0)(model_fn, variables, x, y, key), atol=1e-6
    )
    assert not np.allclose(outputs[0], outputs[2])


def test_kl_objective_against_clean_logits_and_sign_invariance(linear_model, images):
    # TRADES-style: maximise KL(f(x) || f(x')) with the clean logits as y (as the defense passes).
    model_fn, variables = linear_model
    x, y = images
    key = jax.random.key(9)
    clean = model_fn(variables, x)
    result = udr(EPS, ETA, 5, loss="kl_from_reference").run(model_fn, variables, x, clean, key)
    assert float(jnp.min(result.loss)) > 0 and not result.success.any()
    start = attacks.pgd(EPS, ETA, 1).threat.init(key, x)
    assert (result.loss > losses.kl_from_reference(model_fn(variables, start), clean)).all()
    # Spec P18: a positive per-example weight on the objective leaves x' unchanged.
    weights = jnp.arange(1.0, 7.0)
    weighted = udr(EPS, ETA, 5, loss=lambda z, t: weights * losses.kl_from_reference(z, t))
    np.testing.assert_array_equal(weighted(model_fn, variables, x, clean, key), result.x_adv)


def test_scaled_budget_and_bad_hyperparameters(linear_model, images):
    attack = udr(EPS, ETA, 3, lam=0.5)
    half = attack.scaled(0.5)
    assert (half.eps, half.step_size, half.tau, half.lam) == (EPS / 2, ETA / 2, ETA / 2, 0.5)
    assert udr(EPS, ETA, 3, cost="soft").scaled(0.5).tau == 2 * ETA  # a slope ratio: unchanged
    model_fn, variables = linear_model
    x, y = images
    zero = jax.jit(lambda f: attack.scaled(f)(model_fn, variables, x, y, jax.random.key(0)))(0.0)
    np.testing.assert_array_equal(zero, x)  # the warm-up's first step: no NaN, x itself
    bad = [
        (dict(ground_cost="l2"), "squared_hinge.*l2"),
        (dict(cost="hinge"), "hinge.*squared_hinge, soft"),
        (dict(cost="soft", tau=0.0), "tau.*0"),
        (dict(lam=-1.0), "lam.*-1"),
        (dict(ground_cost="l3", cost="soft"), "l3"),
        (dict(loss="hinge"), "hinge"),
    ]
    for kwargs, pattern in bad:
        with pytest.raises(ValueError, match=pattern):
            udr(EPS, ETA, 3, **kwargs)
    with pytest.raises(ValueError, match="steps.*0"):
        udr(EPS, ETA, 0)


# ----------------------------------------------------------------------------------------------
# The learned lambda (Eq. 19)


@pytest.mark.parametrize("statistic", ["mean_abs", "soft", "squared_hinge"])
def test_statistics_are_batch_means_of_the_distance_at_the_adversary(statistic):
    x_adv, x = _pair(5, spread=0.2)
    rule = UDRLambda(eps=EPS, view="udr", statistic=statistic, tau=0.5)
    views = SimpleNamespace(inputs={CLEAN: x, "udr": x_adv})
    d = np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)
    flat = np.abs(d.reshape(len(d), -1))
    if statistic == "mean_abs":
        per_example = flat.mean(1)
    elif statistic == "soft":  # Eq. 16, Linf ground cost (App. G)
        c = flat.max(1)
        per_example = np.where(c < EPS, c, EPS + (c - EPS) / 0.5)
    else:
        per_example = (np.maximum(flat - EPS, 0) ** 2).sum(1) / (2 * 0.5)
    assert float(rule.statistics(views, {})) == pytest.approx(per_example.mean(), rel=1e-5)
    np.testing.assert_allclose(
        distance_statistic(x_adv, x, statistic, eps=EPS, tau=0.5), per_example, rtol=1e-5
    )
    with pytest.raises(ValueError, match="'adv'.*clean, udr"):
        UDRLambda(eps=EPS).statistics(views, {})


@pytest.mark.parametrize(("period", "lam_max"), [(1, None), (3, 1.2)])
def test_lambda_update_equals_numpy_over_20_steps(period, lam_max):
    rule = UDRLambda(eps=EPS, learning_rate=5.0, initial=1.0, period=period, lam_max=lam_max)
    rng = np.random.default_rng(0)
    # Below eps for 12 steps (lambda falls to the floor 0), then above (it rises, to lam_max).
    stats = np.concatenate([rng.uniform(0.0, EPS / 2, 12), rng.uniform(2 * EPS, 4 * EPS, 8)])
    update = jax.jit(rule.update)
    state = rule.init()
    lam, window, trajectory = 1.0, [], []
    for s in stats:
        assert float(rule.metrics(state)["udr_lambda"]) == pytest.approx(lam, abs=1e-6)
        state = update(state, jnp.float32(s))
        window.append(np.float32(s))
        if len(window) == period:
            lam = float(np.clip(lam - 5.0 * (EPS - np.mean(window)), 0.0, lam_max))
            window = []
        trajectory.append(lam)
        assert float(state[LAMBDA]) == pytest.approx(lam, abs=1e-5)
        assert float(rule.metrics(state)["udr_statistic"]) == pytest.approx(s, rel=1e-6)
    assert trajectory[11] == 0.0 and trajectory[-1] > 0.5
    if lam_max is not None:
        assert trajectory[-1] == pytest.approx(lam_max)


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        del train
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


def _tiny_setup(period=1):
    model = _Tiny()
    variables = init_variables(model, jax.random.key(0), (4, 4, 1))
    attack = udr(0.2, 0.05, 3)
    rule = udr_lambda(attack, period=period, learning_rate=5.0)
    terms = (CrossEntropy(CLEAN, name="clean_ce"), CrossEntropy("adv", name="adv_ce"))
    adversary = Adversary(attack, from_state=LambdaFromState())
    defense = Defense(terms, (adversary,), state_rule=rule, name="udr_test")
    x = jax.random.uniform(jax.random.key(1), (8, 4, 4, 1))
    batch = {"image": x, "label": jnp.arange(8) % 3}
    return model, variables, attack, rule, defense, batch


def test_adversary_reads_lambda_from_the_defense_state():
    model, variables, attack, rule, defense, batch = _tiny_setup()
    keys = jax.random.split(jax.random.key(2), 8)
    run = jax.jit(lambda d, state: d(model, variables, batch, keys, state=state), static_argnums=0)
    losses_ = []
    for lam in (0.0, 0.4):
        state = {**rule.init(), LAMBDA: jnp.float32(lam)}
        loss, aux = run(defense, state)
        plain = Defense(defense.terms, (Adversary(attack.with_lambda(lam)),), state_rule=rule)
        plain_loss, plain_aux = run(plain, state)
        assert float(loss) == pytest.approx(float(plain_loss), rel=1e-6)
        x_adv = attack.with_lambda(lam)(make_model_fn(model), variables, batch["image"],
                                        batch["label"], keys)  # fmt: skip
        expected = np.mean(np.abs(np.asarray(x_adv - batch["image"])))
        assert float(aux["statistics"]) == pytest.approx(expected, rel=1e-5)
        assert float(plain_aux["statistics"]) == pytest.approx(expected, rel=1e-5)
        assert float(aux["metrics"]["udr_lambda"]) == pytest.approx(lam)
        losses_.append(float(loss))
    assert losses_[0] != losses_[1]
    nested, bound = bind_lambda(attacks.restarts(attack, 2), 0.25)
    assert bound and nested.attack.lam == 0.25
    assert bind_lambda(attacks.pgd(EPS, ETA, 2), 0.25) == (attacks.pgd(EPS, ETA, 2), False)
    wrong = Adversary(attacks.pgd(EPS, ETA, 2), from_state=LambdaFromState())
    with pytest.raises(ValueError, match="takes no lambda"):
        Defense(defense.terms, (wrong,), state_rule=rule)(model, variables, batch, keys)


def test_train_step_updates_lambda_as_numpy_and_compiles_once():
    model, variables, attack, rule, defense, batch = _tiny_setup(period=2)
    tx = optax.sgd(0.1)
    state = create_train_state(variables, tx, jax.random.key(3), defense.init_state())
    traced = chex.assert_max_traces(n=1)(
        lambda s, b: train_step(
            s, b, model=model, defense=defense, tx=tx, schedule=optax.constant_schedule(0.1)
        )
    )
    mesh = make_mesh()
    spec = jax.P("batch")
    step = jax.jit(jax.shard_map(traced, mesh=mesh, in_specs=(jax.P(), spec), out_specs=jax.P()))
    state = replicate(state, mesh)
    devices = len(mesh.devices.flat)
    local = {k: np.asarray(v).reshape(devices, -1, *v.shape[1:]) for k, v in batch.items()}
    logged_lambda, logged_stat = [], []
    for _ in range(5):
        state, metrics = step(state, shard_batch(local, mesh))
        logged_lambda.append(float(metrics["udr_lambda"]))
        logged_stat.append(float(metrics["udr_statistic"]))
    stats = logged_stat[1:] + [float(state.defense_state["last"])]  # step t's, logged at t + 1
    lam, expected = rule.initial, []
    for t, s in enumerate(stats):
        expected.append(lam)
        if t % 2 == 1:
            lam = max(0.0, lam - 5.0 * (rule.eps - (stats[t - 1] + s) / 2))
    np.testing.assert_allclose(logged_lambda, expected, rtol=1e-5, atol=1e-6)
    assert float(state.defense_state[LAMBDA]) == pytest.approx(lam, rel=1e-5, abs=1e-6)
    assert len(set(logged_lambda)) == 3 and 0.0 < min(stats) < rule.eps


def test_udr_defenses_equal_their_standard_counterparts_in_the_hard_ball_limit():
    """Theorem 1 at the defense level: with lambda = 1 and tau = eta (squared hinge) the UDR
    adversary is PGD's, so UDR-PGD / -TRADES / -MART give their counterparts' loss exactly."""
    from advjax import defenses

    model = _Tiny()
    variables = init_variables(model, jax.random.key(0), (4, 4, 1))
    x = jax.random.uniform(jax.random.key(1), (8, 4, 4, 1))
    batch = {"image": x, "label": jnp.arange(8) % 3}
    keys = jax.random.split(jax.random.key(2), 8)
    udr_spec = {"name": "udr", "eps": EPS, "step_size": ETA, "steps": 3}
    pgd_spec = {"name": "pgd", "eps": EPS, "step_size": ETA, "steps": 3, "keep_best": False}
    pairs = [
        ({"name": "udr_pgd"}, {"name": "pgd_at", "clean_weight": 1.0}),
        ({"name": "udr_trades"}, {"name": "trades", "beta": 1.0, "kl_base": "adv"}),
        (
            {"name": "udr_mart"},
            {"name": "mart", "beta": 1.0, "variant": "thesis", "kl_base": "adv"},
        ),
        (  # Wang et al.'s MART: BCE on the adversary, a CE attack (spec P10)
            {"name": "udr_mart", "variant": "original", "kl_base": "clean"},
            {"name": "mart", "beta": 1.0, "variant": "original"},
        ),
    ]
    for udr_defense, standard in pairs:
        ours = defenses.build({**udr_defense, "attack": udr_spec})
        theirs = defenses.build({**standard, "attack": pgd_spec})
        state = ours.init_state()
        assert float(state[LAMBDA]) == 1.0
        assert ours.adversaries[0].target == theirs.adversaries[0].target, udr_defense
        loss, aux = ours(model, variables, batch, keys, state=state)
        expected, _ = theirs(model, variables, batch, keys)
        assert float(loss) == pytest.approx(float(expected), rel=1e-6), udr_defense
        assert float(aux["metrics"]["udr_lambda"]) == 1.0
    with pytest.raises(ValueError, match="UDR attack"):
        defenses.build({"name": "udr_pgd", "attack": pgd_spec})


def test_overfit_monitor_gives_a_kl_adversary_the_clean_logits():
    """The training loop's Jacobian monitor runs the defense's first adversary on validation
    images; a TRADES-style (KL) UDR adversary must get the clean logits, not the labels (the
    ``Adversary.target`` of the defense), as in the step."""
    from advjax import defenses
    from advjax.train import monitor

    model = _Tiny()
    variables = init_variables(model, jax.random.key(0), (4, 4, 1))
    defense = defenses.build(
        {"name": "udr_trades", "attack": {"name": "udr", "eps": 0.3, "step_size": 0.1, "steps": 2}}
    )
    assert defense.adversaries[0].target == "clean_logits"
    x = np.asarray(jax.random.uniform(jax.random.key(1), (4, 4, 4, 1)))
    y = np.arange(4) % 3
    args = (model, variables, x, y, defense.attacks[0], jax.random.key(2))
    value = monitor.jacobian_norm_at_adversary(*args, target="clean_logits")
    assert np.isfinite(value) and value > 0
    with pytest.raises(ValueError, match="shapes"):  # labels are not logits
        monitor.jacobian_norm_at_adversary(*args)
