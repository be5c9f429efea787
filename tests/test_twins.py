"""The plain-Flax twins of benchmarks/twins.py: the zoo's variables load into them unchanged and
give the zoo's logits (inference and training mode), with no advjax code and no ``sow``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from advjax.models import MODELS, apply_train, get_model, make_model_fn
from tests.conftest import random_variables, variable_shapes

TWINS_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "twins.py"

MNIST = (28, 28, 1)
CIFAR = (32, 32, 3)
# Zoo name -> (constructor kwargs, input HWC); small sizes where the model allows.
CASES = {
    "mnist_small": ({}, MNIST),
    "mnist_cnn4": ({}, MNIST),
    "mnist_fast_at": ({}, MNIST),
    "resnet20": ({}, CIFAR),
    "preact_resnet18": ({}, CIFAR),
    "resnet18": ({}, CIFAR),
    "wide_resnet": ({"depth": 10, "width": 1}, CIFAR),
}


def _load_twins():
    spec = importlib.util.spec_from_file_location("advjax_bench_twins", TWINS_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def twins():
    return _load_twins()


def test_twins_cover_the_zoo(twins):
    assert set(twins.TWINS) == set(MODELS) == set(CASES)
    source = TWINS_PY.read_text()
    assert "import advjax" not in source and "from advjax" not in source
    assert "sow(" not in source
    with pytest.raises(ValueError, match="twins: mnist_small"):
        twins.get_twin("vgg16")


@pytest.mark.parametrize(
    "name, kwargs",
    [
        *((name, kwargs) for name, (kwargs, _) in CASES.items()),
        ("resnet20", {"depth": 32, "num_classes": 100}),
        ("wide_resnet", {}),  # WRN-28-10
        ("wide_resnet", {"depth": 34, "width": 10}),
        ("wide_resnet", {"depth": 16, "width": 4, "num_classes": 7}),
        ("mnist_cnn4", {"num_classes": 5, "mean": (0.5,), "std": (0.25,)}),
    ],
)
def test_same_variable_tree(twins, name, kwargs):
    """Same collections, module names and shapes as the zoo model (shapes only: no compile)."""
    hwc = CASES[name][1]
    zoo = variable_shapes(get_model(name, **kwargs), hwc)
    twin = variable_shapes(twins.get_twin(name, **kwargs), hwc)
    assert jax.tree.structure(twin) == jax.tree.structure(zoo)
    assert jax.tree.map(lambda a: a.shape, twin) == jax.tree.map(lambda a: a.shape, zoo)


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_the_zoo(twins, name):
    kwargs, hwc = CASES[name]
    zoo = get_model(name, **kwargs)
    variables = random_variables(zoo, hwc)
    x = jax.random.uniform(jax.random.key(1), (2, *hwc))
    expected = np.asarray(jax.jit(make_model_fn(zoo))(variables, x))
    model_fn = twins.twin_model_fn(name, **kwargs)
    got = np.asarray(jax.jit(model_fn)(variables, x))
    assert got.shape == (2, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # No recorded features: a mutable ``intermediates`` collection stays empty.
    _, state = jax.eval_shape(
        lambda: model_fn.module.apply(variables, x, train=False, mutable=["intermediates"])
    )
    assert not jax.tree.leaves(state)


@pytest.mark.parametrize(
    "name, kwargs", [("resnet20", {"depth": 8}), ("wide_resnet", {"depth": 10, "width": 1})]
)
def test_train_mode_matches_the_zoo(twins, name, kwargs):
    """BatchNorm in training mode: same logits and same updated running statistics. (Small nets
    with every block type; PreActResNet18's blocks are the WideResNet twin's ``PlainPreActBlock``.)
    """
    hwc = CIFAR
    zoo = get_model(name, **kwargs)
    variables = random_variables(zoo, hwc, seed=1)
    x = jax.random.uniform(jax.random.key(2), (2, *hwc))
    twin = twins.get_twin(name, **kwargs)
    expected, expected_stats = jax.jit(lambda v, x: apply_train(zoo, v, x))(variables, x)
    got, state = jax.jit(lambda v, x: twin.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x
    )
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5),
        dict(state["batch_stats"]),
        dict(expected_stats),
    )


def test_twin_model_fn_is_hashable(twins):
    a = twins.twin_model_fn("wide_resnet", depth=10, width=1)
    b = twins.twin_model_fn("wide_resnet", depth=10, width=1)
    c = twins.twin_model_fn("wide_resnet", depth=10, width=2)
    assert a == b and hash(a) == hash(b) and a != c
    assert isinstance(a.module, twins.TWINS["wide_resnet"])


def test_raw_lax_fast_at_net_matches_the_zoo(twins):
    """The third-party-style NCHW ``lax`` model of the AutoAttack benchmark, on zoo weights."""
    from advjax.models import init_variables

    zoo = get_model("mnist_fast_at")
    variables = jax.jit(lambda k: init_variables(zoo, k, (28, 28, 1)))(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    ours = twins.lax_fast_at(twins.lax_fast_at_params(variables), x)
    np.testing.assert_allclose(ours, make_model_fn(zoo)(variables, x), rtol=1e-5, atol=1e-5)
