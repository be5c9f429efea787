"""Shared fixtures: a linear softmax model with closed-form attacks, and the shared data dir."""

from __future__ import annotations

import os
from pathlib import Path

from advjax import host

# The launch scripts' XLA:CPU settings, so that runs in this process and in launched commands
# compute the same numbers (the bit-for-bit resume tests compare the two).
host.configure()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ADVJAX_SHARED_DIR", REPO.parent / "shared"))
MNIST_DIR = SHARED / "data" / "mnist"


def linear_model_fn(variables, x):
    """``z = W^T vec(x) + b``: a softmax-regression model."""
    return x.reshape(x.shape[0], -1) @ variables["w"] + variables["b"]


@pytest.fixture
def linear_model():
    k_w, k_b = jax.random.split(jax.random.key(0))
    variables = {
        "w": jax.random.normal(k_w, (8 * 8 * 1, 10)),
        "b": 0.1 * jax.random.normal(k_b, (10,)),
    }
    return linear_model_fn, variables


@pytest.fixture
def images():
    x = jax.random.uniform(jax.random.key(1), (6, 8, 8, 1), minval=0.2, maxval=0.8)
    y = jnp.arange(6) % 10
    return x, y


@pytest.fixture
def mnist_dir():
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST not found in {MNIST_DIR}")
    return MNIST_DIR
