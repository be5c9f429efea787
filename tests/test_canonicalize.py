"""``advjax.models.canonicalize``: the rewritten model equals the original in value, gradient and
second-order gradient, for every convolution form it rewrites or lets through (issue 21)."""

from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.models import canonicalize


class ConvVariants(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))  # stride 1, SAME
        x = nn.max_pool(x, (2, 2), (2, 2))  # reshape + max, odd sizes cropped
        x = nn.relu(nn.Conv(4, (3, 3), strides=2, padding="SAME")(x))  # strided
        x = nn.relu(nn.Conv(4, (3, 3), kernel_dilation=2, padding="SAME")(x))  # dilated
        x = nn.max_pool(x, (3, 3), (1, 1), padding="SAME")  # overlapping: falls through
        x = nn.relu(nn.Conv(4, (5, 5), strides=(2, 3), padding=((1, 2), (1, 2)))(x))  # uneven
        x = nn.Conv(4, (3, 3), feature_group_count=2)(x)  # grouped: falls through
        x = nn.Conv(4, (3, 3), feature_group_count=4)(x)  # depthwise: falls through
        return nn.Dense(5)(x.reshape(x.shape[0], -1))


def raw_nchw(variables, x):
    """A raw ``lax`` model in NCHW/OIHW, strided and dilated, inside a nested ``jit``."""
    conv = jax.jit(
        lambda z, w: jax.lax.conv_general_dilated(
            z, w, (2, 1), ((1, 1), (2, 0)), rhs_dilation=(1, 2),
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
        )
    )  # fmt: skip
    y = jnp.tanh(conv(x.transpose(0, 3, 1, 2), variables["w"]))
    return y.reshape(x.shape[0], -1) @ variables["head"]


X = jax.random.uniform(jax.random.key(0), (2, 15, 13, 2))
FLAX = ConvVariants()
MODELS = {
    "flax_variants": (FLAX.apply, FLAX.init(jax.random.key(1), X)),
    "raw_nchw": (
        raw_nchw,
        {
            "w": jax.random.normal(jax.random.key(2), (4, 2, 3, 3)),
            "head": jax.random.normal(jax.random.key(3), (4 * 8 * 11, 5)) * 0.1,
        },
    ),
}


def _loss(fn):
    return lambda v, x: jnp.sum(jax.nn.log_softmax(fn(v, x))[:, 1])


def _close(a, b):
    for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, w, rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("name", list(MODELS))
def test_values_gradients_and_second_order_are_unchanged(name):
    fn, variables = MODELS[name]

    @functools.partial(jax.jit, static_argnums=0)
    def all_orders(f, v, x):
        def input_gradient_norm(w):  # the Jacobian regularisers differentiate input gradients
            return jnp.sum(jax.grad(_loss(f), argnums=1)(w, x) ** 2)

        return f(v, x), jax.grad(_loss(f), argnums=(0, 1))(v, x), jax.grad(input_gradient_norm)(v)

    _close(all_orders(canonicalize(fn), variables, X), all_orders(fn, variables, X))


def test_rewritten_input_gradient_is_canonical_and_compiles_once():
    fn, variables = MODELS["flax_variants"]
    fast = canonicalize(fn)
    text = str(jax.make_jaxpr(jax.grad(_loss(fast), argnums=1))(variables, X))
    # Every rewritten input gradient is a stride-1, base-undilated NHWC/HWIO correlation.
    plain = str(jax.make_jaxpr(jax.grad(_loss(fn), argnums=1))(variables, X))
    assert "lhs_dilation=(2, 2)" in plain
    assert "lhs_dilation=(2, 2)" not in text and "lhs_dilation=(2, 3)" not in text
    # Non-overlapping max pooling loses its select-and-scatter gradient; overlapping keeps it.
    assert plain.count("select_and_scatter_add") == 2 and text.count("select_and_scatter_add") == 1

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(v, x):
        return jax.grad(_loss(fast), argnums=1)(v, x)

    for seed in range(3):
        step(variables, jax.random.uniform(jax.random.key(seed), X.shape))


class StridedNet(nn.Module):
    """A user's model: a strided plain ``nn.Conv``, whose input gradient XLA:CPU leaves slow."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (4, 4), strides=2, padding=((1, 1), (1, 1)))(x))
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


STRIDED = StridedNet()
XS = jax.random.uniform(jax.random.key(5), (4, 8, 8, 1))
YS = jnp.array([0, 1, 2, 0])


def test_attacks_rewrite_a_users_model_by_themselves_on_cpu_and_can_be_switched_off():
    from advjax import attacks
    from advjax.models.canonicalize import canonicalization

    variables = STRIDED.init(jax.random.key(4), XS)
    attack = attacks.apgd(eps=0.1, steps=3)
    args = (STRIDED.apply, variables, XS, YS, jax.random.key(0))
    auto = str(jax.make_jaxpr(attack.run, static_argnums=0)(*args))
    with canonicalization(False):
        off = str(jax.make_jaxpr(attack.run, static_argnums=0)(*args))
        x_off = attack(*args)
    assert jax.default_backend() == "cpu"
    assert "lhs_dilation=(2, 2)" in off and "lhs_dilation=(2, 2)" not in auto
    np.testing.assert_allclose(attack(*args), x_off, atol=1e-6)

    @functools.partial(jax.jit, static_argnums=0)
    @chex.assert_max_traces(n=1)
    def run(model_fn, v, x, y, key):
        return attack(model_fn, v, x, y, key)

    for seed in range(3):  # the rewritten model function keeps the jit cache
        run(STRIDED.apply, variables, XS, YS, jax.random.key(seed))


def test_forward_rewrites_training_mode_with_batch_statistics_unchanged():
    from advjax.models import forward, get_model, init_variables
    from advjax.models.canonicalize import canonicalization

    model = get_model("resnet20", depth=8)
    variables = init_variables(model, jax.random.key(0), (8, 8, 3))
    x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 3))

    def loss(v, z):
        out = forward(model, v, z, train=True, features=("penultimate",))
        return jnp.sum(jax.nn.log_softmax(out.logits)[:, 1]), out

    value_and_grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    (value, out), grads = jax.jit(value_and_grad)(variables, x)
    assert "lhs_dilation=(2, 2)" not in str(jax.make_jaxpr(jax.grad(loss, 1, True))(variables, x))
    with canonicalization(False):  # traced (by a new jit) inside the context
        (value_off, out_off), grads_off = jax.jit(value_and_grad)(variables, x)
    _close((value, out, grads), (value_off, out_off, grads_off))


def test_a_model_inside_a_rewritten_model_is_traced_once():
    calls = []

    def inner(v, x):
        calls.append(1)
        return raw_nchw(v, x)

    variables = MODELS["raw_nchw"][1]
    nested = canonicalize(lambda v, x: canonicalize(inner)(v, x) * 2.0)
    _close(nested(variables, X), 2.0 * raw_nchw(variables, X))
    assert len(calls) == 1


ZOO = {  # small instances of every zoo model, as the rewrite sees them (inference mode)
    "mnist_small": ({}, (28, 28, 1)),
    "mnist_cnn4": ({}, (28, 28, 1)),
    "mnist_fast_at": ({}, (28, 28, 1)),
    "resnet20": ({"depth": 8}, (8, 8, 3)),
    "preact_resnet18": ({}, (8, 8, 3)),
    "resnet18": ({}, (8, 8, 3)),
    "wide_resnet": ({"depth": 10, "width": 1}, (8, 8, 3)),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_every_zoo_model_keeps_values_gradients_and_second_order(name):
    from advjax.models import MODELS as REGISTRY
    from advjax.models import init_variables, make_model_fn
    from advjax.models.canonicalize import canonicalization

    assert set(ZOO) == set(REGISTRY)
    kwargs, shape = ZOO[name]
    model = REGISTRY[name](**kwargs)
    variables = init_variables(model, jax.random.key(0), shape)
    x = jax.random.uniform(jax.random.key(1), (2, *shape))
    fn = make_model_fn(model)  # the reference: forward's own rewrite switched off
    fast = canonicalize(fn)

    def derivatives(f):  # jitted: one compilation beats op-by-op second order (2x on CPU)
        def all_orders(v, z):
            def input_gradient_norm(w):
                return jnp.sum(jax.grad(_loss(f), argnums=1)(w, z) ** 2)

            return f(v, z), jax.grad(_loss(f), 1)(v, z), jax.grad(input_gradient_norm)(v)

        return jax.jit(all_orders)(variables, x)

    with canonicalization(False):
        reference = derivatives(fn)
    _close(derivatives(fast), reference)


def test_an_nnx_model_is_rewritten_inside_attacks():
    """Flax nnx, used the functional way (``nnx.split`` / ``nnx.merge`` in a model function)."""
    from flax import nnx

    from advjax import attacks
    from advjax.models.canonicalize import canonicalization

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 4, (4, 4), strides=2, padding=((1, 1), (1, 1)), rngs=rngs)
            self.head = nnx.Linear(4 * 4 * 4, 3, rngs=rngs)

        def __call__(self, x):
            return self.head(nnx.relu(self.conv(x)).reshape(x.shape[0], -1))

    graphdef, state = nnx.split(Net(nnx.Rngs(0)))

    def model_fn(state, x):
        return nnx.merge(graphdef, state)(x)

    attack = attacks.apgd(eps=0.1, steps=3)
    args = (model_fn, state, XS, YS, jax.random.key(0))
    assert "lhs_dilation=(2, 2)" not in str(jax.make_jaxpr(attack.run, static_argnums=0)(*args))
    with canonicalization(False):
        x_off = attack(*args)
    np.testing.assert_allclose(attack(*args), x_off, atol=1e-6)
