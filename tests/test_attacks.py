"""Attacks: closed forms on linear models, invariants, jit/vmap equivalences, no recompiles."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks, losses
from advjax.threats import LpBall
from tests.conftest import linear_model_fn


def test_fgsm_equals_analytic_sign_step(linear_model, images):
    model_fn, variables = linear_model
    x, y = images
    eps = 0.05
    x_adv = attacks.fgsm(eps)(model_fn, variables, x, y, jax.random.key(0))
    # d CE / dx = W (softmax(z) - onehot(y)) for z = W^T x + b.
    p = jax.nn.softmax(model_fn(variables, x))
    grad = (p - jax.nn.one_hot(y, 10)) @ variables["w"].T
    expected = jnp.clip(x + eps * jnp.sign(grad.reshape(x.shape)), 0, 1)
    np.testing.assert_allclose(x_adv, expected, atol=1e-6)


def _binary_linear():
    w = jax.random.normal(jax.random.key(3), (64, 2))
    return {"w": w, "b": jnp.array([0.3, -0.2])}


@pytest.mark.parametrize("norm,eps,step", [("linf", 0.1, 0.01), ("l2", 0.5, 0.05)])
def test_pgd_reaches_analytic_worst_margin(images, norm, eps, step):
    variables = _binary_linear()
    x, _ = images
    y = jnp.zeros(x.shape[0], jnp.int32)
    attack = attacks.pgd(eps, step, steps=40, norm=norm, loss="margin", random_init=False)
    x_adv = jax.jit(attack, static_argnums=0)(linear_model_fn, variables, x, y, jax.random.key(0))
    got = losses.margin(linear_model_fn(variables, x_adv), y)
    # margin = u . x + c with u = w_1 - w_0; maximise over the ball (the box is inactive here).
    u = variables["w"][:, 1] - variables["w"][:, 0]
    clean = losses.margin(linear_model_fn(variables, x), y)
    bonus = eps * (jnp.sum(jnp.abs(u)) if norm == "linf" else jnp.linalg.norm(u))
    np.testing.assert_allclose(got, clean + bonus, atol=1e-4, rtol=0)


def test_linf_worst_case_with_active_box():
    variables = _binary_linear()
    x = jax.random.uniform(jax.random.key(5), (3, 8, 8, 1))  # many pixels near 0 and 1
    y = jnp.zeros(3, jnp.int32)
    eps = 0.3
    x_adv = attacks.pgd(eps, 0.02, 30, loss="margin", random_init=False)(
        linear_model_fn, variables, x, y, jax.random.key(0)
    )
    u = (variables["w"][:, 1] - variables["w"][:, 0]).reshape(1, 8, 8, 1)
    optimum = jnp.clip(x + eps * jnp.sign(u), 0, 1)
    np.testing.assert_allclose(x_adv, optimum, atol=1e-6)


@pytest.mark.parametrize(
    "attack",
    [
        attacks.pgd(0.1, 0.02, 5),
        attacks.pgd(0.8, 0.2, 5, norm="l2"),
        attacks.pgd(3.0, 1.0, 5, norm="l1"),
        attacks.fgsm_rs(0.1),
        attacks.rfgsm(0.1),
        attacks.mifgsm(0.1, steps=5),
        attacks.bim(0.1, 0.03, 5),
    ],
    ids=lambda a: type(a).__name__,
)
def test_every_iterate_stays_in_ball_and_box(linear_model, images, attack):
    model_fn, variables = linear_model
    x, y = images
    threat = getattr(attack, "threat", LpBall("linf", getattr(attack, "eps", 0.0)))
    steps = getattr(attack, "steps", 1)
    for k in range(1, steps + 1):
        a = (
            attack
            if not hasattr(attack, "steps")
            else attack.__class__(**{**attack.__dict__, "steps": k, "keep_best": False})
        )
        x_adv = a(model_fn, variables, x, y, jax.random.key(k))
        assert bool(jnp.all(threat.contains(x_adv, x))), (type(attack).__name__, k)


def test_monotone_in_eps_and_restarts(linear_model, images):
    model_fn, variables = linear_model
    x, y = images
    key = jax.random.key(0)
    prev = -np.inf
    for eps in [0.0, 0.02, 0.05, 0.1]:
        r = attacks.pgd(eps, eps / 4, 10, loss="margin", random_init=False).run(
            model_fn, variables, x, y, key
        )
        assert float(jnp.min(r.loss)) >= prev - 1e-5 or eps == 0.0
        prev = float(jnp.min(r.loss))
    single = attacks.pgd(0.05, 0.01, 5).run(model_fn, variables, x, y, key)
    many = attacks.restarts(attacks.pgd(0.05, 0.01, 5), 4).run(model_fn, variables, x, y, key)
    first = attacks.pgd(0.05, 0.01, 5).run(model_fn, variables, x, y, attacks.split_keys(key, 4)[0])
    assert bool(jnp.all(many.loss >= first.loss - 1e-6))
    assert many.x_adv.shape == single.x_adv.shape


def test_targeted_pgd_reaches_target(linear_model, images):
    model_fn, variables = linear_model
    x, _ = images
    targets = jnp.full(x.shape[0], 7)
    result = attacks.pgd(0.5, 0.05, 20, targeted=True).run(
        model_fn, variables, x, targets, jax.random.key(0)
    )
    assert bool(jnp.all(result.success))
    assert bool(jnp.all(jnp.argmax(model_fn(variables, result.x_adv), -1) == 7))


def test_jit_matches_no_jit(linear_model, images):
    model_fn, variables = linear_model
    x, y = images
    attack = attacks.restarts(attacks.pgd(0.1, 0.02, 5, norm="l2"), 2)
    key = jax.random.key(4)
    eager = attack(model_fn, variables, x, y, key)
    jitted = jax.jit(attack, static_argnums=0)(model_fn, variables, x, y, key)
    np.testing.assert_allclose(eager, jitted, atol=1e-6)


def test_vmap_over_stacked_ensemble_equals_loop(linear_model, images):
    _, variables = linear_model
    x, y = images
    members = [
        jax.tree.map(lambda a, i=i: a * (1.0 + 0.3 * i) + 0.05 * i, variables) for i in range(3)
    ]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *members)
    attack = attacks.pgd(0.1, 0.02, 5)
    key = jax.random.key(2)
    batched = jax.vmap(attack, in_axes=(None, 0, None, None, None))(
        linear_model_fn, stacked, x, y, key
    )
    for i, member in enumerate(members):
        np.testing.assert_allclose(
            batched[i], attack(linear_model_fn, member, x, y, key), atol=1e-6
        )


def test_vmap_over_batch_with_per_example_keys(linear_model, images):
    model_fn, variables = linear_model
    x, y = images
    keys = jax.random.split(jax.random.key(0), x.shape[0])
    attack = attacks.pgd(0.1, 0.02, 5)
    whole = attack(model_fn, variables, x, y, keys)
    one_by_one = jax.vmap(
        lambda xi, yi, k: attack(model_fn, variables, xi[None], yi[None], k[None])
    )(x, y, keys)[:, 0]
    np.testing.assert_allclose(whole, one_by_one, atol=1e-6)


def test_no_recompilation(linear_model, images):
    model_fn, variables = linear_model
    x, y = images
    attack = attacks.pgd(0.1, 0.02, 3)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(variables, x, y, key):
        return attack(model_fn, variables, x, y, key)

    for i in range(3):
        run(variables, x + 0.0 * i, y, jax.random.key(i))


def test_bad_inputs_give_clear_errors(linear_model, images):
    model_fn, variables = linear_model
    x, y = images
    with pytest.raises(ValueError, match="eps must be >= 0"):
        attacks.pgd(-0.1, 0.01, 10)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        attacks.pgd(0.1, 0.01, -1)
    with pytest.raises(ValueError, match="valid norms"):
        attacks.pgd(0.1, 0.01, 1, norm="linf2")
    with pytest.raises(ValueError, match="valid attacks: .*pgd"):
        attacks.build({"name": "deepfool"})
    with pytest.raises(ValueError, match="NCHW"):
        attacks.fgsm(0.1)(model_fn, variables, jnp.zeros((2, 1, 8, 8)), y[:2], jax.random.key(0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attacks.fgsm(0.1)(model_fn, variables, x * 255, y, jax.random.key(0))
    with pytest.raises(ValueError, match="NHWC"):
        attacks.fgsm(0.1)(model_fn, variables, x[0], y, jax.random.key(0))


def test_sequence_chains_attacks_from_each_output(linear_model, images):
    model_fn, variables = linear_model
    x, y = images
    first, second = attacks.pgd(0.05, 0.01, 5), attacks.fgsm(0.02)
    chained = attacks.sequence(first, second)
    key = jax.random.key(3)
    result = chained.run(model_fn, variables, x, y, key)
    k1, k2 = attacks.split_keys(key, 2)
    x1 = first(model_fn, variables, x, y, k1)
    expected = second.run(model_fn, variables, x1, y, k2)
    np.testing.assert_array_equal(result.x_adv, expected.x_adv)
    np.testing.assert_array_equal(result.success, expected.success)
    # The composite perturbation lies in the sum of the two balls, and not in the first alone.
    size = jnp.max(jnp.abs(result.x_adv - x), axis=(1, 2, 3))
    assert jnp.all(size <= 0.07 + 1e-6) and jnp.any(size > 0.05 + 1e-4)
    with pytest.raises(ValueError, match="at least one"):
        attacks.sequence()
