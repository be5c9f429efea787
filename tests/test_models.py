"""Tests for advjax.models: shapes, named features, BatchNorm modes, parameter counts, input checks,
the registry, and the hashable model-function wrappers (DESIGN.md, "Contracts: Model function" and
"Ensembles and features")."""

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
    Forward,
    MnistCNN4,
    MnistSmallCNN,
    ModelFn,
    PreActResNet18,
    ResNet20,
    WideResNet,
    apply_train,
    check_images,
    forward,
    get_model,
    init_variables,
    make_feature_fn,
    make_model_fn,
    param_count,
)
from advjax.models.canonicalize import canonicalization

# name -> (input HWC, {feature: shape without the batch axis}) for the registry defaults.
CASES = {
    "mnist_small": (
        (28, 28, 1),
        {"block1": (14, 14, 32), "block2": (7, 7, 64), "last_conv": (7, 7, 64),
         "penultimate": (1024,)},
    ),
    "mnist_cnn4": (
        (28, 28, 1),
        {"block1": (12, 12, 32), "block2": (4, 4, 64), "last_conv": (4, 4, 64),
         "penultimate": (200,)},
    ),
    "mnist_fast_at": (
        (28, 28, 1),
        {"block1": (14, 14, 16), "block2": (7, 7, 32), "last_conv": (7, 7, 32),
         "penultimate": (100,)},
    ),
    "resnet20": (
        (32, 32, 3),
        {"stage1": (32, 32, 16), "stage2": (16, 16, 32), "stage3": (8, 8, 64),
         "last_conv": (8, 8, 64), "penultimate": (64,)},
    ),
    "preact_resnet18": (
        (32, 32, 3),
        {"stage1": (32, 32, 64), "stage2": (16, 16, 128), "stage3": (8, 8, 256),
         "stage4": (4, 4, 512), "last_conv": (4, 4, 512), "penultimate": (512,)},
    ),
    "resnet18": (
        (32, 32, 3),
        {"stage1": (32, 32, 64), "stage2": (16, 16, 128), "stage3": (8, 8, 256),
         "stage4": (4, 4, 512), "last_conv": (4, 4, 512), "penultimate": (512,)},
    ),
    "wide_resnet": (  # WRN-28-10: 16k/32k/64k channels with k = 10
        (32, 32, 3),
        {"group1": (32, 32, 160), "group2": (16, 16, 320), "group3": (8, 8, 640),
         "last_conv": (8, 8, 640), "penultimate": (640,)},
    ),
}  # fmt: skip
HAS_BN = {"resnet20", "preact_resnet18", "resnet18", "wide_resnet"}


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
    shape, feature_shapes = CASES[name]
    model = get_model(name)
    assert type(model).feature_names == tuple(feature_shapes)
    assert {"last_conv", "penultimate"} <= set(model.feature_names)
    variables = _abstract_variables(model, shape)
    assert isinstance(variables, dict) and "intermediates" not in variables
    assert ("batch_stats" in variables) == (name in HAS_BN)
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    expected = {k: (2, *v) for k, v in feature_shapes.items()}
    logits = jax.eval_shape(make_model_fn(model), variables, x)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    logits = jax.eval_shape(make_model_fn(model, train=True), variables, x)
    assert logits.shape == (2, 10)
    logits, features = jax.eval_shape(make_feature_fn(model), variables, x)
    assert logits.shape == (2, 10) and features["penultimate"].shape == expected["penultimate"]
    assert list(features) == ["penultimate"]
    for train in (False, True):
        out = jax.eval_shape(
            lambda v, x, train=train: forward(
                model, v, x, train=train, features=model.feature_names
            ),
            variables,
            x,
        )
        assert isinstance(out, Forward) and out.logits.shape == (2, 10)
        assert {k: v.shape for k, v in out.features.items()} == expected
        assert all(v.dtype == jnp.float32 for v in out.features.values())
        if train and name in HAS_BN:
            chex.assert_trees_all_equal_shapes_and_dtypes(out.batch_stats, variables["batch_stats"])
        else:
            assert out.batch_stats == {}
    logits, stats = jax.eval_shape(lambda v, x: apply_train(model, v, x), variables, x)
    assert logits.shape == (2, 10)
    if name in HAS_BN:
        chex.assert_trees_all_equal_shapes_and_dtypes(stats, variables["batch_stats"])
    else:
        assert stats == {}


def _dense(variables, name, z):
    params = variables["params"][name]
    return z @ params["kernel"] + params["bias"]


@pytest.mark.parametrize(
    ("model", "last_dense"),
    [(MnistCNN4(), "fc3"), (ResNet20(depth=8), "fc"), (WideResNet(depth=10, width=1), "fc")],
    ids=["mnist_cnn4", "resnet8", "wrn10_1"],
)
def test_forward_values_features_and_batchnorm_modes(model, last_dense):
    shape = (28, 28, 1) if isinstance(model, MnistCNN4) else (32, 32, 3)
    # One jit per model keeps CPU compile time low (eager mode compiles op by op).
    variables = jax.jit(lambda k: init_variables(model, k, shape))(_key())
    has_bn = "batch_stats" in variables
    names = model.feature_names

    @jax.jit
    def run(variables, x):
        return dict(
            logits=make_model_fn(model)(variables, x),
            logits_again=make_model_fn(model)(variables, x),
            logits_first=make_model_fn(model)(variables, x[:1]),
            feature_fn=make_feature_fn(model, ("penultimate", "last_conv"))(variables, x),
            eval=forward(model, variables, x, train=False, features=names),
            train=forward(model, variables, x, train=True, features=names),
            apply_train=apply_train(model, variables, x),
            train_fn=make_model_fn(model, train=True)(variables, x),
            train_fn_first=make_model_fn(model, train=True)(variables, x[:1]),
            eval_mutated=model.apply(variables, x, train=False, mutable=["batch_stats"])[1],
        )

    x = _images(shape, batch=4)
    before = jax.tree_util.tree_map(np.array, variables)
    out = run(variables, x)
    logits, ev, tr = out["logits"], out["eval"], out["train"]
    assert bool(jnp.all(jnp.isfinite(logits)))
    np.testing.assert_array_equal(ev.logits, logits)
    assert ev.batch_stats == {}
    # feature_fn: inference mode, exactly the requested names.
    logits_f, features_f = out["feature_fn"]
    assert list(features_f) == ["last_conv", "penultimate"]  # a pytree dict: sorted keys
    np.testing.assert_array_equal(logits_f, logits)
    np.testing.assert_array_equal(features_f["penultimate"], ev.features["penultimate"])
    # The penultimate feature is the input of the last dense layer, in both modes.
    for result in (ev, tr):
        np.testing.assert_allclose(
            _dense(variables, last_dense, result.features["penultimate"]),
            result.logits,
            rtol=1e-5,
            atol=1e-5,
        )
    # ResNets: penultimate is the global average of last_conv.
    if not isinstance(model, MnistCNN4):
        for result in (ev, tr):
            np.testing.assert_allclose(
                result.features["last_conv"].mean(axis=(1, 2)),
                result.features["penultimate"],
                rtol=1e-5,
                atol=1e-6,
            )
    # apply_train and make_model_fn(train=True) are forward(train=True).
    np.testing.assert_array_equal(out["apply_train"][0], tr.logits)
    chex.assert_trees_all_equal(out["apply_train"][1], tr.batch_stats)
    np.testing.assert_array_equal(out["train_fn"], tr.logits)
    # Inference mode is deterministic and per-example (no batch dependence through BatchNorm).
    np.testing.assert_array_equal(out["logits_again"], logits)
    np.testing.assert_allclose(out["logits_first"], logits[:1], rtol=1e-5, atol=1e-5)
    # Nothing changes the variables (make_model_fn(train=True) drops the statistics update).
    chex.assert_trees_all_equal(jax.tree_util.tree_map(np.array, variables), before)
    if not has_bn:
        assert tr.batch_stats == {} and out["eval_mutated"] == {}
        np.testing.assert_allclose(tr.logits, logits, rtol=1e-5, atol=1e-5)
        for name in names:
            np.testing.assert_allclose(tr.features[name], ev.features[name], rtol=1e-5, atol=1e-5)
        return
    # Training mode updates every running statistic and uses batch statistics: its logits and
    # features differ from inference mode and depend on the rest of the batch ...
    changed = jax.tree_util.tree_map(
        lambda a, b: bool(jnp.any(a != b)), tr.batch_stats, variables["batch_stats"]
    )
    assert all(jax.tree_util.tree_leaves(changed))
    assert not np.allclose(tr.logits, logits)
    assert not np.allclose(out["train_fn"], logits)  # make_model_fn: train=True != train=False
    assert not np.allclose(out["train_fn_first"], out["train_fn"][:1], atol=1e-3)
    for name in names:
        assert not np.allclose(tr.features[name], ev.features[name]), name
    # ... while eval mode leaves them untouched.
    chex.assert_trees_all_equal(out["eval_mutated"]["batch_stats"], variables["batch_stats"])


def test_train_mode_features_use_batch_statistics():
    # Training mode normalises with the batch's own statistics: recovering them from the running
    # update (momentum 0.9) and running inference mode with them reproduces the train features.
    model = ResNet20(depth=8)
    variables = jax.jit(lambda k: init_variables(model, k, (32, 32, 3)))(_key())
    x = _images((32, 32, 3), batch=4)
    names = ("stage3", "penultimate")

    @jax.jit
    def run(variables, x):
        tr = forward(model, variables, x, train=True, features=names)
        batch = jax.tree_util.tree_map(
            lambda new, old: (new - 0.9 * old) / 0.1, tr.batch_stats, variables["batch_stats"]
        )
        ev = forward(model, {**variables, "batch_stats": batch}, x, train=False, features=names)
        return tr, ev

    tr, ev = run(variables, x)
    # Flax normalises and updates with the same (biased) batch variance, so this is exact up to
    # the rounding amplified by the division by 0.1.
    for name in names:
        np.testing.assert_allclose(tr.features[name], ev.features[name], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(tr.logits, ev.logits, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    ("model", "shape"),
    [(MnistCNN4(), (28, 28, 1)), (ResNet20(depth=8), (32, 32, 3))],
    ids=["mnist_cnn4", "resnet8"],
)
def test_features_cost_nothing_and_do_not_change_logits_or_gradients(model, shape):
    variables = jax.jit(lambda k: init_variables(model, k, shape))(_key())
    x = _images(shape, batch=3)
    for train in (False, True):
        # Without features the traced computation is the plain model's: sow is a no-op.
        mutable = ["batch_stats"] if train else False
        plain = jax.make_jaxpr(
            lambda v, x, t=train, m=mutable: model.apply(v, x, train=t, mutable=m)
        )
        ours = jax.make_jaxpr(lambda v, x, t=train: forward(model, v, x, train=t))
        with canonicalization(False):  # forward's CPU convolution rewrite is tested apart
            assert str(ours(variables, x)) == str(plain(variables, x))

    def loss(params, x, features):
        out = forward(model, {**variables, "params": params}, x, train=True, features=features)
        return jnp.sum(jax.nn.log_softmax(out.logits)[:, 0]), out.logits

    grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)
    (g_params, g_x), logits = grad(variables["params"], x, ())
    (g_params_f, g_x_f), logits_f = grad(variables["params"], x, model.feature_names)
    np.testing.assert_array_equal(logits_f, logits)
    chex.assert_trees_all_equal(g_params_f, g_params)
    np.testing.assert_array_equal(g_x_f, g_x)


def test_unknown_feature_lists_recorded_names():
    model = MnistCNN4()
    variables = _abstract_variables(model, (28, 28, 1))
    x = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
    with pytest.raises(ValueError) as err:
        jax.eval_shape(
            lambda v, x: forward(model, v, x, train=False, features=("fc1",)), variables, x
        )
    message = str(err.value)
    assert "MnistCNN4 does not record the feature(s) 'fc1'" in message
    for name in model.feature_names:
        assert repr(name) in message
    with pytest.raises(ValueError, match="'nope'"):
        jax.eval_shape(make_feature_fn(model, ("penultimate", "nope")), variables, x)
    # A bare string is one name; empty or repeated names are rejected.
    assert make_feature_fn(model, "last_conv").features == ("last_conv",)
    with pytest.raises(ValueError, match="twice"):
        make_feature_fn(model, ("penultimate", "penultimate"))
    with pytest.raises(TypeError, match="non-empty strings"):
        make_feature_fn(model, ("",))


class _PlainModel(nn.Module):
    """A user model in the old convention: records nothing, takes an unused return_features."""

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        h = nn.relu(nn.Dense(8)(x.reshape(x.shape[0], -1)))
        logits = nn.Dense(3)(h)
        return (logits, h) if return_features else logits


class _Head(nn.Module):
    @nn.compact
    def __call__(self, h):
        self.sow("intermediates", "hidden", h)
        return nn.Dense(3)(h)


class _NestedModel(nn.Module):
    """A user model that records one feature itself and one in a submodule."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.relu(nn.Dense(8)(x.reshape(x.shape[0], -1)))
        self.sow("intermediates", "embedding", h)
        return _Head(name="head")(h)


def test_user_models_with_and_without_recorded_features():
    x = _images((4, 4, 1))
    plain = _PlainModel()
    variables = init_variables(plain, _key(), (4, 4, 1))
    expected = plain.apply(variables, x)
    np.testing.assert_array_equal(make_model_fn(plain)(variables, x), expected)
    np.testing.assert_array_equal(make_model_fn(plain, train=True)(variables, x), expected)
    logits, stats = apply_train(plain, variables, x)
    np.testing.assert_array_equal(logits, expected)
    assert stats == {}
    out = forward(plain, variables, x, train=False)
    np.testing.assert_array_equal(out.logits, expected)
    assert out.features == {} and out.batch_stats == {}
    with pytest.raises(ValueError, match="records none.*self.sow\\('intermediates'"):
        forward(plain, variables, x, train=False, features="penultimate")

    nested = _NestedModel()
    variables = init_variables(nested, _key(), (4, 4, 1))
    assert set(variables) == {"params"}  # init does not keep the recorded features
    out = forward(nested, variables, x, train=True, features=("embedding", "head/hidden"))
    np.testing.assert_array_equal(out.features["embedding"], out.features["head/hidden"])
    assert out.features["embedding"].shape == (2, 8) and out.batch_stats == {}
    with pytest.raises(ValueError, match="it records: 'embedding', 'head/hidden'"):
        forward(nested, variables, x, train=False, features="hidden")
    # A stale "intermediates" entry in variables is ignored rather than appended to.
    _, state = nested.apply(variables, x, mutable=["intermediates"])
    again = forward(nested, {**variables, **state}, x, train=False, features="embedding")
    np.testing.assert_array_equal(again.features["embedding"], out.features["embedding"])


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
    assert _count(PreActResNet18(final_bn=False), (32, 32, 3)) == 11_171_146
    assert _count(get_model("resnet18"), (32, 32, 3)) == 11_173_962  # kuangliu ResNet18
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
    assert a == ModelFn(MnistCNN4(), train=False) and not a.train
    assert make_model_fn(MnistCNN4(num_classes=5)) != a
    t1, t2 = make_model_fn(ResNet20(), train=True), make_model_fn(ResNet20(), train=True)
    assert t1 == t2 and hash(t1) == hash(t2) and t1.train
    assert t1 != make_model_fn(ResNet20())
    f = make_feature_fn(MnistCNN4())
    assert isinstance(f, FeatureFn) and f.features == ("penultimate",) and not f.train
    assert f == make_feature_fn(MnistCNN4()) and hash(f) == hash(make_feature_fn(MnistCNN4()))
    g = make_feature_fn(MnistCNN4(), ["last_conv", "penultimate"])  # a list becomes a tuple
    assert g == make_feature_fn(MnistCNN4(), ("last_conv", "penultimate")) and hash(g) == hash(
        FeatureFn(MnistCNN4(), ["last_conv", "penultimate"])
    )
    assert g != f and make_feature_fn(MnistCNN4(), train=True) != f
    with pytest.raises(TypeError, match="tuple"):
        make_model_fn(MnistCNN4(mean=[0.5]))
    with pytest.raises(TypeError, match="tuple"):
        make_feature_fn(MnistCNN4(mean=[0.5]))


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
