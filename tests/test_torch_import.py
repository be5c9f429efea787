"""PyTorch checkpoint import (advjax.models.torch_import), the saved-model format
(advjax.models.saved_model) and ``launch/convert.py``.

Parity: a randomly initialised PyTorch model (tests/torch_reference_models.py, random BatchNorm
running statistics included) and its converted twin give the same logits in inference and training
mode, and the same updated running statistics. The tests that need PyTorch skip without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.models import WideResNet, forward, get_model, init_variables, param_count
from advjax.models import torch_import as ti
from advjax.models.saved_model import (
    HEADER_FILE,
    VARIABLES_FILE,
    load_model,
    model_spec,
    read_header,
    save_model,
)

REPO = Path(__file__).resolve().parents[1]
CIFAR, MNIST = (32, 32, 3), (28, 28, 1)
TOL = {"rtol": 1e-5, "atol": 1e-4}


def _fast_at_state(num_classes: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """A Wong et al. ``mnist_net()`` state_dict as numpy arrays (keys 0, 2, 5, 7)."""
    rng = np.random.default_rng(seed)
    shapes = {
        "0.weight": (16, 1, 4, 4),
        "0.bias": (16,),
        "2.weight": (32, 16, 4, 4),
        "2.bias": (32,),
        "5.weight": (100, 32 * 7 * 7),
        "5.bias": (100,),
        "7.weight": (num_classes, 100),
        "7.bias": (num_classes,),
    }
    return {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in shapes.items()}


# --- Layout conversions and checks (no PyTorch) -----------------------------------------------


def test_layout_conversions_closed_forms():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3, 2, 4)).astype(np.float32)  # OIHW
    k = ti.conv_kernel(w)
    assert k.shape == (2, 4, 3, 5) and k[1, 3, 2, 4] == w[4, 2, 1, 3]
    d = rng.normal(size=(7, 6)).astype(np.float32)
    np.testing.assert_array_equal(ti.dense_kernel(d), d.T)
    # Flatten order: a linear layer on the NCHW map equals the permuted kernel on the NHWC map.
    c, h, wd = 3, 4, 5
    fmap = rng.normal(size=(2, c, h, wd)).astype(np.float32)
    weight = rng.normal(size=(6, c * h * wd)).astype(np.float32)
    torch_out = fmap.reshape(2, -1) @ weight.T
    flax_out = fmap.transpose(0, 2, 3, 1).reshape(2, -1) @ ti.dense_kernel_chw(weight, (c, h, wd))
    np.testing.assert_allclose(flax_out, torch_out, rtol=1e-5, atol=1e-5)
    params, stats = ti.batch_norm_variables(*(np.full(4, v) for v in (1.0, 2.0, 3.0, 4.0)))
    assert {k: float(v[0]) for k, v in params.items()} == {"scale": 1.0, "bias": 2.0}
    assert {k: float(v[0]) for k, v in stats.items()} == {"mean": 3.0, "var": 4.0}
    assert all(v.dtype == np.float32 for v in (*params.values(), *stats.values()))


def test_unknown_arch_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown arch 'vgg16'") as err:
        ti.convert_state_dict("vgg16", {})
    for name in ("wide_resnet", "wrn-<depth>-<width>", "preact_resnet18", "resnet18", "mnist_cnn4"):
        assert name in str(err.value)


def test_missing_unexpected_and_misshaped_keys_are_named():
    state = _fast_at_state()
    model, variables = ti.convert_state_dict("mnist_fast_at", state)
    assert type(model).__name__ == "MnistFastATNet" and param_count(variables["params"]) == 166_406
    del state["2.bias"]
    state["extra.weight"] = np.zeros(3, np.float32)
    state["extra.num_batches_tracked"] = np.zeros((), np.int64)  # ignored
    state["7.weight"] = np.zeros((10, 99), np.float32)
    with pytest.raises(ValueError) as err:
        ti.convert_state_dict("mnist_fast_at", state)
    message = str(err.value)
    assert "missing keys: 2.bias" in message
    assert "unexpected keys: extra.weight;" in message and "num_batches_tracked" not in message
    assert "mis-shaped keys: 7.weight (10, 99) (expected (10, 100))" in message
    with pytest.raises(TypeError, match="arch 'mnist_fast_at'.*depth"):
        ti.convert_state_dict("mnist_fast_at", _fast_at_state(), depth=3)


def test_num_classes_and_normalization_buffers():
    state = _fast_at_state(num_classes=7)
    state["mu"], state["sigma"] = np.full((1, 1, 1, 1), 0.5), np.full((1, 1, 1, 1), 0.25)
    model, variables = ti.convert_state_dict("mnist_fast_at", state)
    assert (model.num_classes, model.mean, model.std) == (7, (0.5,), (0.25,))
    model, _ = ti.convert_state_dict("mnist_fast_at", state, mean=[0.5], std=[0.25])  # agrees
    assert model.mean == (0.5,)
    with pytest.raises(ValueError, match="disagree with the checkpoint's 'mu'/'sigma'"):
        ti.convert_state_dict("mnist_fast_at", state, mean=[0.1], std=[0.25])
    with pytest.raises(ValueError, match="both mean= and std="):
        ti.convert_state_dict("mnist_fast_at", _fast_at_state(), mean=[0.1])
    model, _ = ti.convert_state_dict("mnist_fast_at", _fast_at_state())
    assert (model.mean, model.std) == ((0.0,), (1.0,))  # no normalisation


def test_unwrap_state_dict_containers():
    state = _fast_at_state()
    plain = ti.unwrap_state_dict(state)
    assert plain.keys() == state.keys()
    for wrapped in (
        {"state_dict": state},
        {"model": {f"module.{k}": v for k, v in state.items()}},
        {"net": state, "acc": 91.5, "epoch": 3},
        {"checkpoint_meta": 1, "state_dict": {"model": state}},
    ):
        unwrapped = ti.unwrap_state_dict(wrapped)
        assert unwrapped.keys() == state.keys()
        np.testing.assert_array_equal(unwrapped["5.weight"], state["5.weight"])
    with pytest.raises(ValueError, match="no state_dict found"):
        ti.unwrap_state_dict({"epoch": 3})


# --- Saved models (no PyTorch) ------------------------------------------------------------------


def test_saved_model_round_trip_and_errors(tmp_path):
    model, variables = ti.convert_state_dict(
        "mnist_fast_at", _fast_at_state(), mean=[0.1307], std=[0.3081]
    )
    name, kwargs = model_spec(model)
    assert (name, kwargs) == ("mnist_fast_at", {"mean": (0.1307,), "std": (0.3081,)})
    directory = save_model(tmp_path / "m", name, kwargs, variables, provenance={"source": "x.pt"})
    header = read_header(directory)
    assert header["model"] == "mnist_fast_at" and header["input_shape"] == [28, 28, 1]
    assert header["provenance"] == {"source": "x.pt"} and header["format_version"] == 1
    loaded, restored = load_model(directory)
    assert loaded == model and hash(loaded) == hash(model)  # tuples again, hashable
    jax.tree.map(np.testing.assert_array_equal, restored, variables)

    # A tree that is not the model's: refused at save and at load.
    with pytest.raises(ValueError, match="missing: params/conv3/bias"):
        save_model(tmp_path / "bad", "mnist_cnn4", {}, variables)
    header_file = directory / HEADER_FILE
    for change, message in (
        ({"model": "vgg16"}, "unknown model 'vgg16'"),
        (
            {"kwargs": {"num_classes": 5}},
            r"mis-shaped: params/fc2/bias \(10,\) \(expected \(5,\)\)",
        ),
        ({"format_version": 99}, "newer than this advjax reads"),
    ):
        header_file.write_text(json.dumps({**header, **change}))
        with pytest.raises(ValueError, match=message):
            load_model(directory)
    header_file.write_text(json.dumps(header))
    payload = bytearray((directory / VARIABLES_FILE).read_bytes())
    payload[-1] ^= 1
    (directory / VARIABLES_FILE).write_bytes(bytes(payload))
    with pytest.raises(ValueError, match="corrupted or replaced"):
        load_model(directory)


# --- Parity with PyTorch ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_ref():
    torch = pytest.importorskip("torch")
    from tests import torch_reference_models

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches; leave the other core to XLA
    yield torch, torch_reference_models
    torch.set_num_threads(threads)


# case -> (reference model builder, arch, convert kwargs, dropped state keys, input HWC, train).
# Training mode is compared where BatchNorm is (one compilation per case: both modes in one jit).
PARITY = {
    "wrn-16-2": (lambda r: r.RobustBenchWideResNet(16, 2), "wide_resnet", {}, (), CIFAR, True),
    "preact_resnet18": (  # RobustBench's PreActResNet18: no final BN, shortcut reads x
        lambda r: r.RobustBenchPreActResNet18(bn_before_fc=False, out_shortcut=False),
        "preact_resnet18",
        {},
        (),
        CIFAR,
        True,
    ),
    "preact_resnet18_v2": (  # bn_before_fc and out_shortcut; normalisation given as kwargs
        lambda r: r.RobustBenchPreActResNet18(
            bn_before_fc=True, out_shortcut=True, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)
        ),
        "preact_resnet18",
        {"preact_shortcut": True, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)},
        ("mu", "sigma"),
        CIFAR,
        False,
    ),
    "resnet18": (  # normalisation read from the mu/sigma buffers
        lambda r: r.CifarResNet18(mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616)),
        "resnet18",
        {},
        (),
        CIFAR,
        True,
    ),
    "mnist_cnn4": (lambda r: r.TradesSmallCNN(), "mnist_cnn4", {}, (), MNIST, False),
    "mnist_small": (lambda r: r.MadryMnistCNN(), "mnist_small", {}, (), MNIST, False),
    "mnist_fast_at": (lambda r: r.fast_at_mnist_net(), "mnist_fast_at", {}, (), MNIST, False),
}


def _nchw(torch, x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _torch_train_step(torch, net, x):
    """Training-mode logits and the state_dict after PyTorch's running-statistics update, with
    ``running_var`` re-expressed with the biased batch variance that Flax uses:
    ``new - (new - 0.9 old) / n``, n = batch x height x width at that layer."""
    old = {k: v.clone() for k, v in net.state_dict().items()}
    counts, hooks = {}, []

    def count(name):
        return lambda module, inputs: counts.__setitem__(name, inputs[0][:, 0].numel())

    for name, module in net.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            hooks.append(module.register_forward_pre_hook(count(name)))
    net.train()
    with torch.no_grad():
        logits = net(_nchw(torch, x)).numpy()
    net.eval()
    for hook in hooks:
        hook.remove()
    state = dict(net.state_dict())
    for name, n in counts.items():
        new, previous = state[f"{name}.running_var"], old[f"{name}.running_var"]
        state[f"{name}.running_var"] = new - (new - 0.9 * previous) / n
    return logits, state


@pytest.mark.parametrize("case", list(PARITY))
def test_converted_model_matches_pytorch(torch_ref, case):
    torch, ref = torch_ref
    build, arch, kwargs, drop, hwc, train = PARITY[case]
    net = ref.randomize(build(ref), seed=1)
    state = {k: v for k, v in net.state_dict().items() if k not in drop}
    model, variables = ti.convert_state_dict(arch, state, **kwargs)
    x = np.random.default_rng(2).random((2, *hwc), dtype=np.float32)

    @jax.jit
    def run(variables, x):
        logits = forward(model, variables, x, train=False).logits
        return logits, (forward(model, variables, x, train=True) if train else None)

    logits, trained = run(variables, x)
    with torch.no_grad():
        expected = net(_nchw(torch, x)).numpy()
    assert np.abs(expected).max() > 1.0  # non-trivial logits
    np.testing.assert_allclose(np.asarray(logits), expected, **TOL)
    if not train:
        return
    train_logits, torch_state = _torch_train_step(torch, net, x)
    np.testing.assert_allclose(np.asarray(trained.logits), train_logits, **TOL)
    _, updated = ti.convert_state_dict(arch, {k: torch_state[k] for k in state}, **kwargs)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5),
        trained.batch_stats,
        updated["batch_stats"],
    )


def _abstract_state(module) -> dict[str, np.ndarray]:
    """A state_dict of zero-copy zero arrays with the shapes of a meta-device ``module``'s."""
    return {
        k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in module.state_dict().items()
    }


def test_full_size_wide_resnets_convert(torch_ref):
    # Keys and shapes only (meta-device PyTorch models, no forward): RobustBench's WRN-28-10
    # (with Carmon et al.'s unused sub_block1) and WRN-34-10, under a fixed and an inferred arch.
    torch, ref = torch_ref
    with torch.device("meta"):
        wrn28 = _abstract_state(ref.RobustBenchWideResNet(28, 10, sub_block1=True))
        wrn34 = _abstract_state(ref.RobustBenchWideResNet(34, 10))
    model, variables = ti.convert_state_dict("wrn-28-10", wrn28)
    assert (model.depth, model.width) == (28, 10)
    assert param_count(variables["params"]) == 36_479_194
    model, variables = ti.convert_state_dict("wide_resnet", wrn34)
    assert (model.depth, model.width, model.num_classes) == (34, 10, 10)
    assert param_count(variables["params"]) == 46_160_474
    assert isinstance(model, WideResNet) and model.mean == (0.0,)
    with pytest.raises(ValueError, match="unexpected keys: block1.layer.4.bn1.bias"):
        ti.convert_state_dict("wrn-28-10", wrn34)


def test_wide_resnet_variants(torch_ref):
    # RobustBench's sub_block1 copy is skipped; bias_last=False gives a zero fc bias.
    _, ref = torch_ref
    net = ref.randomize(ref.RobustBenchWideResNet(10, 1, sub_block1=True, bias_last=False))
    state = net.state_dict()
    _, variables = ti.convert_state_dict("wrn-10-1", state)
    without = {k: v for k, v in state.items() if not k.startswith("sub_block1.")}
    _, reference = ti.convert_state_dict("wrn-10-1", without)
    jax.tree.map(np.testing.assert_array_equal, variables, reference)
    assert not np.any(np.asarray(variables["params"]["fc"]["bias"]))
    np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state["fc.weight"].numpy().T)


# --- The command line and a PyTorch-free reload -------------------------------------------------

_RELOAD = """
import sys
sys.modules["torch"] = None  # any "import torch" now raises ImportError
import numpy as np
from advjax.models import make_model_fn
from advjax.models.saved_model import load_model
try:
    import torch  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("torch was importable")
model, variables = load_model(sys.argv[1])
np.save(sys.argv[3], np.asarray(make_model_fn(model)(variables, np.load(sys.argv[2]))))
"""


def _start(args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def commands(torch_ref, tmp_path_factory):
    """Two processes, run side by side: ``launch/convert.py`` on a fast-AT MNIST net saved with
    ``torch.save`` (DataParallel keys, in a container), and a PyTorch-free process that reloads
    the same net, converted and saved here, and computes its logits."""
    torch, ref = torch_ref
    tmp = tmp_path_factory.mktemp("convert")
    net = ref.randomize(ref.fast_at_mnist_net(), seed=3)
    checkpoint = tmp / "fast_at.pt"
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 15}, checkpoint)
    model, variables = ti.convert_state_dict(
        "mnist_fast_at", ti.load_torch_state_dict(checkpoint), mean=[0.1307], std=[0.3081]
    )
    save_model(tmp / "saved", *model_spec(model), variables)
    x = np.random.default_rng(4).random((3, *MNIST), dtype=np.float32)
    np.save(tmp / "x.npy", x)
    cli = _start(
        [
            "-m",
            "launch.convert",
            f"--torch_checkpoint={checkpoint}",
            "--arch=mnist_fast_at",
            f"--output={tmp / 'cli'}",
            "--mean=0.1307",
            "--std=0.3081",
        ]  # fmt: skip
    )
    reload = _start(["-c", _RELOAD, str(tmp / "saved"), str(tmp / "x.npy"), str(tmp / "y.npy")])
    results = {"net": net, "checkpoint": checkpoint, "tmp": tmp, "x": x}
    for name, proc in (("cli", cli), ("reload", reload)):
        stdout, stderr = proc.communicate(timeout=300)
        results[name] = (proc.returncode, stdout, stderr)
    return results


def test_cli_converts_a_torch_checkpoint(commands):
    returncode, stdout, stderr = commands["cli"]
    assert returncode == 0, stderr[-3000:]
    assert "parameters: 166,406" in stdout
    header = read_header(commands["tmp"] / "cli")
    assert header["model"] == "mnist_fast_at"
    assert header["kwargs"] == {"mean": [0.1307], "std": [0.3081]}
    assert header["provenance"] == {
        "arch": "mnist_fast_at",
        "source": "fast_at.pt",
        "source_sha256": hashlib.sha256(commands["checkpoint"].read_bytes()).hexdigest(),
    }
    # The variables converted in this process, bit for bit.
    _, ours = load_model(commands["tmp"] / "saved")
    jax.tree.map(np.testing.assert_array_equal, load_model(commands["tmp"] / "cli")[1], ours)


def test_saved_model_reloads_without_torch(torch_ref, commands):
    torch, _ = torch_ref
    returncode, _, stderr = commands["reload"]
    assert returncode == 0, stderr[-3000:]
    x = commands["x"]
    with torch.no_grad():
        expected = commands["net"](_nchw(torch, (x - 0.1307) / 0.3081)).numpy()
    np.testing.assert_allclose(np.load(commands["tmp"] / "y.npy"), expected, **TOL)


def test_registry_resnet18_and_preact_options():
    # The new registry entry and the PreActResNet18 options (defaults unchanged).
    shapes = lambda m: jax.eval_shape(lambda: init_variables(m, jax.random.key(0), CIFAR))
    assert param_count(shapes(get_model("resnet18"))["params"]) == 11_173_962
    default = shapes(get_model("preact_resnet18"))
    variant = shapes(get_model("preact_resnet18", final_bn=False, preact_shortcut=False))
    assert "bn_final" in default["params"] and "bn_final" not in variant["params"]
    assert param_count(default["params"]) - param_count(variant["params"]) == 2 * 512
    model = get_model("resnet18")
    out = jax.eval_shape(
        lambda v, x: forward(model, v, x, train=False, features=model.feature_names),
        shapes(model),
        jax.ShapeDtypeStruct((1, *CIFAR), jnp.float32),
    )
    assert {k: v.shape for k, v in out.features.items()} == {
        "stage1": (1, 32, 32, 64), "stage2": (1, 16, 16, 128), "stage3": (1, 8, 8, 256),
        "stage4": (1, 4, 4, 512), "last_conv": (1, 4, 4, 512), "penultimate": (1, 512),
    }  # fmt: skip
