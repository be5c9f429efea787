"""``advjax.models.canonicalize``: the rewritten model equals the original in value, gradient and
second-order gradient, for every convolution form it rewrites or lets through (issue 21)."""

from __future__ import annotations

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
    fast = canonicalize(fn)
    _close(fast(variables, X), fn(variables, X))
    grad = jax.grad(_loss(fn), argnums=(0, 1))
    _close(jax.grad(_loss(fast), argnums=(0, 1))(variables, X), grad(variables, X))

    def input_gradient_norm(f):  # the Jacobian regularisers differentiate input gradients
        return lambda v: jnp.sum(jax.grad(_loss(f), argnums=1)(v, X) ** 2)

    second = jax.grad(input_gradient_norm(fn))(variables)
    _close(jax.grad(input_gradient_norm(fast))(variables), second)


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
