"""Shared fixtures: a linear softmax model with closed-form attacks, and the shared data dir."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# One persistent XLA compilation cache per test run, shared by the xdist workers and the commands
# the tests launch (they inherit the environment): a train step compiled by one process is read,
# not recompiled, by the next (a kill-and-resume test compiles it twice otherwise). A user's own
# JAX_COMPILATION_CACHE_DIR is kept.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID", f"pid{os.getpid()}")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"advjax-tests-xla-{_RUN}")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

from advjax import host  # noqa: E402

# The launch scripts' XLA:CPU settings, so that runs in this process and in launched commands
# compute the same numbers (the bit-for-bit resume tests compare the two).
host.configure()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ADVJAX_SHARED_DIR", REPO.parent / "shared"))
MNIST_DIR = SHARED / "data" / "mnist"


def linear_model_fn(variables, x):
    """``z = W^T vec(x) + b``: a softmax-regression model."""
    return x.reshape(x.shape[0], -1) @ variables["w"] + variables["b"]


def linear_toy_problem(seed: int, n: int, pixel_range: tuple[int, int], scale: float, every: int):
    """A toy 8x8 ``Dataset`` of ``n`` images with pixels in ``pixel_range`` (uint8) labelled by
    a random linear model (weights ``scale`` N(0, 1)), every ``every``-th label changed (clean
    mistakes); returns ``(dataset, variables)``."""
    from advjax.data import Dataset

    rng = np.random.default_rng(seed)
    images = rng.integers(*pixel_range, size=(n, 8, 8, 1), dtype=np.uint8)
    k_w, k_b = jax.random.split(jax.random.key(seed))
    variables = {
        "w": jax.random.normal(k_w, (64, 10)) * scale,
        "b": 0.1 * jax.random.normal(k_b, (10,)),
    }
    logits = linear_model_fn(variables, jnp.asarray(images, jnp.float32) / 255.0)
    labels = np.asarray(jnp.argmax(logits, -1)).astype(np.int32)
    labels[::every] = (labels[::every] + 1) % 10
    return Dataset(images, labels, 10, "toy"), variables


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


def variable_shapes(model, hwc):
    """The variable shapes of ``model`` (no compilation), without ``intermediates``."""
    x = jnp.zeros((1, *hwc), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    return {k: v for k, v in shapes.items() if k != "intermediates"}


def random_variables(model, hwc, seed=0):
    """Variables of ``model`` with He-scaled kernels, non-zero biases and non-trivial BatchNorm
    scales and running statistics (Flax's init has zero biases, mean 0 and var 1)."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = path[-1].key
        if name == "kernel":
            a = rng.normal(0.0, np.sqrt(2.0 / np.prod(s.shape[:-1])), s.shape)
        elif name == "scale":
            a = rng.uniform(0.5, 1.0, s.shape)
        elif name == "var":
            a = rng.uniform(1.0, 3.0, s.shape)
        elif name == "mean":
            a = rng.normal(0.0, 0.2, s.shape)
        else:  # biases
            a = rng.normal(0.0, 0.1, s.shape)
        return jnp.asarray(a.astype(np.float32))

    return jax.tree_util.tree_map_with_path(draw, variable_shapes(model, hwc))
