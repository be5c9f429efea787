"""Tests for advjax.models: shapes, features, BatchNorm modes, parameter counts, input checks,
the registry, and the hashable model-function wrappers (DESIGN.md, "Contracts: Model function")."""

from __future__ import annotations

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.models import (
    MODELS,
    FeatureFn,
    MnistCNN4,
    MnistSmallCNN,
    ModelFn,
    PreActResNet18,
    ResNet20,
    WideResNet,
    apply_train,
    check_images,
    get_model,
    init_variables,
    make_feature_fn,
    make_model_fn,
    param_count,
)

# name -> (input HWC, feature dim) for the registry defaults (WRN-28-10 has 64 * 10 features).
CASES = {
    "mnist_small": ((28, 28, 1), 1024),
    "mnist_cnn4": ((28, 28, 1), 200),
    "mnist_fast_at": ((28, 28, 1), 100),
    "resnet20": ((32, 32, 3), 64),
    "preact_resnet18": ((32, 32, 3), 512),
    "wide_resnet": ((32, 32, 3), 640),
}
HAS_BN = {"resnet20", "preact_resnet18", "wide_resnet"}


def _images(shape, batch=2, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random((batch, *shape), np.float32))


def _key(seed=0):
    # The "rbg" PRNG compiles several times faster than threefry on CPU; init accepts any key.
    return jax.random.key(seed, impl="rbg")


def _abstract_variables(model, shape):
    return jax.eval_shape(lambda k: init_variables(model, k, shape), jax.random.key(0))


def test_cases_cover_registry():
    assert set(CASES) == set(MODELS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_and_feature_shapes(name):
    # Shapes through jax.eval_shape: full-size models, no compilation, no FLOPs.
    shape, dim = CASES[name]
    model = get_model(name)
    variables = _abstract_variables(model, shape)
    assert isinstance(variables, dict)
    assert ("batch_stats" in variables) == (name in HAS_BN)
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    logits = jax.eval_shape(make_model_fn(model), variables, x)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    logits, features = jax.eval_shape(make_feature_fn(model), variables, x)
    assert logits.shape == (2, 10) and features.shape == (2, dim)
    (logits, features), stats = jax.eval_shape(
        lambda v, x: apply_train(model, v, x, return_features=True), variables, x
    )
    assert logits.shape == (2, 10) and features.shape == (2, dim)
    if name in HAS_BN:
        chex.assert_trees_all_equal_shapes_and_dtypes(stats, variables["batch_stats"])
    else:
        assert stats == {}


@pytest.mark.parametrize(
    "model",
    [MnistCNN4(), ResNet20(depth=8), WideResNet(depth=10, width=1)],
    ids=["mnist_cnn4", "resnet8", "wrn10_1"],
)
def test_forward_values_and_batchnorm_modes(model):
    shape = (28, 28, 1) if isinstance(model, MnistCNN4) else (32, 32, 3)
    # One jit per model keeps CPU compile time low (eager mode compiles op by op).
    variables = jax.jit(lambda k: init_variables(model, k, shape))(_key())
    has_bn = "batch_stats" in variables

    @jax.jit
    def run(variables, x):
        logits = make_model_fn(model)(variables, x)
        logits_again = make_model_fn(model)(variables, x)
        logits_first = make_model_fn(model)(variables, x[:1])
        logits_f, features = make_feature_fn(model)(variables, x)
        train_out, new_stats = apply_train(model, variables, x, return_features=True)
        _, eval_mutated = model.apply(variables, x, train=False, mutable=["batch_stats"])
        return (
            logits, logits_again, logits_first, logits_f, features, train_out, new_stats,
            eval_mutated,
        )  # fmt: skip

    x = _images(shape, batch=4)
    logits, logits_again, logits_first, logits_f, features, train_out, new_stats, eval_mutated = (
        run(variables, x)
    )
    train_logits, train_features = train_out
    assert bool(jnp.all(jnp.isfinite(logits)))
    np.testing.assert_allclose(logits_f, logits, rtol=1e-5, atol=1e-5)
    assert train_logits.shape == (4, 10) and train_features.shape == features.shape
    # Inference mode is deterministic and per-example (no batch dependence through BatchNorm).
    np.testing.assert_array_equal(logits_again, logits)
    np.testing.assert_allclose(logits_first, logits[:1], rtol=1e-5, atol=1e-5)
    if not has_bn:
        assert new_stats == {} and eval_mutated == {}
        np.testing.assert_allclose(train_logits, logits, rtol=1e-5, atol=1e-5)
        return
    # Training mode updates every running statistic and uses batch statistics ...
    changed = jax.tree_util.tree_map(
        lambda a, b: bool(jnp.any(a != b)), new_stats, variables["batch_stats"]
    )
    assert all(jax.tree_util.tree_leaves(changed))
    assert not np.allclose(train_logits, logits)
    # ... while eval mode leaves them untouched.
    chex.assert_trees_all_equal(eval_mutated["batch_stats"], variables["batch_stats"])


def test_num_classes():
    model = get_model("mnist_cnn4", num_classes=7)
    variables = _abstract_variables(model, (28, 28, 1))
    x = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
    assert jax.eval_shape(make_model_fn(model), variables, x).shape == (2, 7)


def _count(model, shape):
    return param_count(_abstract_variables(model, shape)["params"])


def test_mnist_param_counts():
    # Madry mnist_challenge, SAME padding:
    # conv 5*5*1*32+32, conv 5*5*32*64+64, fc 7*7*64*1024+1024, fc 1024*10+10.
    expected_small = (5 * 5 * 1 * 32 + 32) + (5 * 5 * 32 * 64 + 64)
    expected_small += (7 * 7 * 64 * 1024 + 1024) + (1024 * 10 + 10)
    assert expected_small == 3_274_634
    assert _count(MnistSmallCNN(), (28, 28, 1)) == expected_small
    # TRADES SmallCNN, VALID padding: 28->26->24->12->10->8->4, flatten 4*4*64 = 1024.
    expected_cnn4 = (3 * 3 * 1 * 32 + 32) + (3 * 3 * 32 * 32 + 32)
    expected_cnn4 += (3 * 3 * 32 * 64 + 64) + (3 * 3 * 64 * 64 + 64)
    expected_cnn4 += (1024 * 200 + 200) + (200 * 200 + 200) + (200 * 10 + 10)
    assert expected_cnn4 == 312_202
    assert _count(MnistCNN4(), (28, 28, 1)) == expected_cnn4


def test_cifar_param_counts():
    # PyTorch counts (BN affine, bias-free convs): Wong et al. PreActResNet18 (kuangliu's 11,171,146
    # plus the final BN's 2 * 512), and the TRADES WideResNet's published WRN-34-10 / WRN-28-10.
    assert _count(PreActResNet18(), (32, 32, 3)) == 11_172_170
    assert _count(WideResNet(depth=34, width=10), (32, 32, 3)) == 46_160_474
    assert _count(WideResNet(depth=28, width=10), (32, 32, 3)) == 36_479_194


def test_normalisation_is_inside_model():
    plain = MnistCNN4()
    scaled = MnistCNN4(mean=(0.5,), std=(0.25,))
    variables = jax.jit(lambda k: init_variables(plain, k, (28, 28, 1)))(_key())
    x = _images((28, 28, 1))
    both = jax.jit(lambda v, x: (scaled.apply(v, x), plain.apply(v, (x - 0.5) / 0.25)))
    np.testing.assert_allclose(*both(variables, x), rtol=1e-5, atol=1e-5)
    cifar = ResNet20()
    assert cifar.mean == (0.4914, 0.4822, 0.4465) and cifar.std == (0.2471, 0.2435, 0.2616)


@pytest.mark.parametrize(
    ("name", "shape"), [("mnist_small", (2, 1, 28, 28)), ("resnet20", (2, 3, 32, 32))]
)
def test_nchw_input_raises(name, shape):
    model = get_model(name)
    with pytest.raises(ValueError, match=r"NCHW.*jnp\.transpose\(x, \(0, 2, 3, 1\)\)"):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jnp.zeros(shape))


def test_input_check_messages():
    with pytest.raises(ValueError, match=r"NHWC \[batch, height, width, channels\]"):
        check_images(jnp.zeros((2, 28, 28)))
    with pytest.raises(ValueError, match="expects 3-channel"):
        check_images(jnp.zeros((2, 32, 32, 1)), channels=3)
    with pytest.raises(ValueError, match="expects 1-channel"):
        check_images(jnp.zeros((2, 28, 28, 3)), channels=1)
    with pytest.raises(ValueError, match="expects 28x28"):
        check_images(jnp.zeros((2, 32, 32, 1)), expected_hw=(28, 28), channels=1)
    with pytest.raises(TypeError, match=r"astype\(jnp.float32\) / 255"):
        check_images(jnp.zeros((2, 28, 28, 1), jnp.uint8))
    check_images(jnp.zeros((2, 32, 32, 3)), expected_hw=(32, 32), channels=3)
    # Static checks only: they run on tracers under jit.
    jax.jit(lambda x: (check_images(x, channels=3), x)[1])(jnp.zeros((1, 8, 8, 3)))
    model = MnistCNN4()
    with pytest.raises(ValueError, match="expects 1-channel"):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jnp.zeros((2, 28, 28, 3)))


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_model("resnet50")
    message = str(err.value)
    assert message.startswith("unknown model 'resnet50'; valid models: ")
    assert message.endswith(", ".join(sorted(MODELS)))


def test_wide_resnet_defaults_and_bad_depth():
    model = get_model("wide_resnet")
    assert (model.depth, model.width) == (28, 10)
    with pytest.raises(ValueError, match="6n\\+4"):
        jax.eval_shape(
            lambda k: init_variables(WideResNet(depth=30), k, (32, 32, 3)), jax.random.key(0)
        )


def test_model_fn_equality_and_hash():
    a, b = make_model_fn(MnistCNN4()), make_model_fn(MnistCNN4())
    assert isinstance(a, ModelFn) and a is not b
    assert a == b and hash(a) == hash(b)
    assert make_model_fn(MnistCNN4(num_classes=5)) != a
    assert make_feature_fn(MnistCNN4()) == make_feature_fn(MnistCNN4())
    assert isinstance(make_feature_fn(MnistCNN4()), FeatureFn)
    assert hash(make_feature_fn(MnistCNN4())) == hash(make_feature_fn(MnistCNN4()))
    with pytest.raises(TypeError, match="tuple"):
        make_model_fn(MnistCNN4(mean=[0.5]))


def test_model_fn_static_under_jit_single_trace():
    chex.clear_trace_counter()

    @chex.assert_max_traces(n=1)
    def predict(model_fn, variables, x):
        return model_fn(variables, x)

    jitted = jax.jit(predict, static_argnums=0)
    model = MnistCNN4()
    variables = jax.jit(lambda k: init_variables(model, k, (28, 28, 1)))(_key())
    x = _images((28, 28, 1))
    out1 = jitted(make_model_fn(model), variables, x)
    out2 = jitted(make_model_fn(MnistCNN4()), variables, x + 0.1)  # distinct but equal
    assert out1.shape == out2.shape == (2, 10)
    assert not np.allclose(out1, out2)
    np.testing.assert_array_equal(jitted(ModelFn(model), variables, x), out1)


def test_reshape_max_pool_matches_flax_max_pool():
    from advjax.models.mnist import _max_pool

    x = jax.random.normal(jax.random.key(0), (2, 9, 8, 3))
    expected = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")
    np.testing.assert_array_equal(_max_pool(x), expected)


@pytest.mark.parametrize(
    ("strides", "padding", "kernel"), [(1, "SAME", 5), (1, "VALID", 3), (1, ((2, 0), (1, 3)), 3)]
)
def test_canonical_conv_matches_lax_conv_to_second_order(strides, padding, kernel):
    """Same value, input and kernel gradients, and gradient of the input-gradient norm (what the
    Jacobian regularisers differentiate) as ``lax.conv_general_dilated``."""
    from advjax.models import canonical_conv

    x = _images((9, 9, 3), batch=2)
    w = jax.random.normal(jax.random.key(1), (kernel, kernel, 3, 4))
    dn = ("NHWC", "HWIO", "NHWC")

    def make(conv):
        def f(x, w):
            return jnp.sum(jnp.sin(conv(x, w, (strides, strides), padding, dimension_numbers=dn)))

        return f

    ours, ref = make(canonical_conv.conv_general_dilated), make(jax.lax.conv_general_dilated)
    np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5)
    for a, b in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

    def input_grad_norm(f):
        return lambda w: jnp.sum(jax.grad(f)(x, w) ** 2)

    np.testing.assert_allclose(
        jax.grad(input_grad_norm(ours))(w), jax.grad(input_grad_norm(ref))(w), rtol=1e-4, atol=1e-4
    )
    # Every convolution of the input gradient is in canonical HWIO form; lax's transpose is not.
    assert _all_convs_hwio(jax.grad(ours), x, w) and not _all_convs_hwio(jax.grad(ref), x, w)


def _all_convs_hwio(fn, *args) -> bool:
    """Every NHWC-input convolution in ``fn``'s jaxpr has an HWIO kernel (weight-gradient convs,
    whose input is the batch-transposed activation, are not NHWC-input)."""
    specs = re.findall(r"lhs_spec=(\(.*?\)), rhs_spec=(\(.*?\))", str(jax.make_jaxpr(fn)(*args)))
    return all(rhs == "(3, 2, 0, 1)" for lhs, rhs in specs if lhs == "(0, 3, 1, 2)")


def test_canonical_conv_falls_through_for_strided_convs():
    from advjax.models import canonical_conv

    x, w = _images((8, 8, 1)), jax.random.normal(jax.random.key(1), (4, 4, 1, 2))
    args = ((2, 2), ((1, 1), (1, 1)))
    kwargs = dict(dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(
        canonical_conv.conv_general_dilated(x, w, *args, **kwargs),
        jax.lax.conv_general_dilated(x, w, *args, **kwargs),
    )
    grad = jax.grad(lambda x: jnp.sum(canonical_conv.conv_general_dilated(x, w, *args, **kwargs)))
    assert not _all_convs_hwio(grad, x)
