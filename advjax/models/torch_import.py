"""PyTorch checkpoints (``state_dict``s) as advjax models with the same outputs.

``convert_state_dict(arch, state_dict, **arch_kwargs) -> (model, variables)`` builds the advjax
model of ``arch`` and fills its variables from a PyTorch ``state_dict`` (numpy arrays or torch
tensors); ``load_torch_state_dict(path)`` reads a ``.pt`` file (PyTorch is imported only there).
The model then takes NHWC images in [0, 1] like every advjax model, and its logits equal the
PyTorch model's on the same (NCHW) images, in inference and training mode.

Architectures (``arch``), with the PyTorch names they read:

=====================  ==================================  =========================================
arch                   PyTorch definition                  advjax model, state_dict names
=====================  ==================================  =========================================
``wide_resnet``,       RobustBench ``WideResNet`` (from    :class:`WideResNet`; ``conv1``,
``wrn-<d>-<k>``        TRADES ``models/wideresnet.py``)    ``block<g>.layer.<i>.{bn1,conv1,bn2,
                                                           conv2,convShortcut}``, ``bn1``, ``fc``
``preact_resnet18``    RobustBench / Wong et al.           :class:`PreActResNet18`; ``conv1``,
                       ``PreActResNet(PreActBlock,         ``layer<s>.<i>.{bn1,conv1,bn2,conv2,
                       [2, 2, 2, 2])``                     shortcut.0}``, ``bn`` (optional),
                                                           ``linear``
``resnet18``           kuangliu/pytorch-cifar ``ResNet18`` :class:`ResNet18`; ``conv1``, ``bn1``,
                       (RobustBench ``ResNet18``)          ``layer<s>.<i>.{conv1,bn1,conv2,bn2,
                                                           shortcut.0,shortcut.1}``, ``linear``
``mnist_cnn4``         TRADES ``SmallCNN``                 :class:`MnistCNN4`;
                                                           ``feature_extractor.conv{1..4}``,
                                                           ``classifier.fc{1..3}``
``mnist_small``        Madry et al. ``mnist_challenge``    :class:`MnistSmallCNN`; ``conv1``
                       CNN in PyTorch (5x5 convs with      (32x1x5x5), ``conv2`` (64x32x5x5),
                       ``padding=2``, ``MaxPool2d(2)``)    ``fc1`` (1024x3136), ``fc2``
``mnist_fast_at``      Wong et al. ``mnist_net()``, an     :class:`MnistFastATNet`; ``0``, ``2``
                       ``nn.Sequential``                   (convs), ``5``, ``7`` (linears)
=====================  ==================================  =========================================

``wide_resnet`` infers depth (6n + 4 from the number of ``block1.layer.<i>`` blocks) and width (the
channels of ``block1.layer.0.conv1`` / 16); ``wrn-28-10``, ``wrn-34-10`` and every ``wrn-<d>-<k>``
fix them instead, so another checkpoint fails the key and shape checks. Every arch infers
``num_classes`` from its last linear layer. ``wide_resnet`` also reads RobustBench's variants: the
unused ``sub_block1.*`` copy of ``sub_block1=True`` models is skipped, and ``bias_last=False``
(no ``fc.bias``) gives a zero bias. ``preact_resnet18`` infers ``final_bn`` from the presence of
``bn.*`` (RobustBench's ``bn_before_fc``); which tensor the projection shortcut reads cannot be seen
in the keys: the default ``preact_shortcut=False`` is the block input ``x`` (Wong et al.'s code,
RobustBench's ``PreActBlock``), ``preact_shortcut=True`` is ``relu(bn1(x))`` (RobustBench's
``PreActBlockV2`` or ``out_shortcut=True``, kuangliu's ``PreActBlock``).

Input normalisation: ``mean=`` and ``std=`` (per-channel sequences, both or neither; ``None``: no
normalisation) become the model's first operation ``(x - mean) / std``. Checkpoints that normalise
inside the PyTorch model keep the statistics as top-level buffers (``mu`` / ``sigma`` as in
RobustBench's wrappers, or ``mean`` / ``std``); those are read, and must agree with ``mean=`` /
``std=`` when both are given.

Layout conversions (:func:`conv_kernel`, :func:`dense_kernel`, :func:`dense_kernel_chw`,
:func:`batch_norm_variables`): convolution weights OIHW -> HWIO; linear weights ``[out, in]`` ->
``[in, out]``; the first linear layer after a flatten has its input rows permuted from PyTorch's
(C, H, W) flatten order to advjax's NHWC (H, W, C) order; BatchNorm ``weight`` / ``bias`` /
``running_mean`` / ``running_var`` -> ``params`` ``scale`` / ``bias`` and ``batch_stats`` ``mean`` /
``var``. advjax's BatchNorm is PyTorch's default one (epsilon 1e-5, momentum 0.1 = Flax momentum
0.9; a state_dict does not record these, so checkpoints trained with other values need the same
values in the model). One difference remains in training mode: PyTorch updates ``running_var``
with the unbiased batch variance (factor n / (n - 1), n = batch x height x width), Flax with the
biased one that both use to normalise; logits agree, the updated running variances differ by
``0.1 * batch_var / (n - 1)``.

Checks: every tensor of the state_dict is used exactly once (``num_batches_tracked`` counters are
ignored); missing, unexpected and mis-shaped keys are reported together in one ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from advjax.models.functional import FEATURE_COLLECTION, init_variables
from advjax.models.mnist import MnistCNN4, MnistFastATNet, MnistSmallCNN
from advjax.models.resnet import PreActResNet18, ResNet18
from advjax.models.wide_resnet import WideResNet

StateDict = Mapping[str, Any]
ModulePath = tuple[str, ...]

#: Container keys that ``load_torch_state_dict`` looks through, in this order.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net")
#: Top-level normalisation buffers read as ``(mean, std)``.
NORMALIZATION_BUFFERS = (("mu", "sigma"), ("mean", "std"))
_IGNORED_SUFFIX = ".num_batches_tracked"


# --- Layout conversions ------------------------------------------------------------------------


def to_numpy(value: Any) -> np.ndarray:
    """A numpy array from a numpy array, array-like or torch tensor (without importing torch)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()  # numpy has no bfloat16
    return np.asarray(value)


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch ``Conv2d.weight`` [out, in, kh, kw] (OIHW) -> Flax ``Conv`` kernel (HWIO)."""
    return np.transpose(np.asarray(weight, np.float32), (2, 3, 1, 0))


def dense_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch ``Linear.weight`` [out, in] -> Flax ``Dense`` kernel [in, out]."""
    return np.asarray(weight, np.float32).T


def dense_kernel_chw(weight: np.ndarray, chw: Sequence[int]) -> np.ndarray:
    """The kernel of a linear layer that reads a flattened ``[C, H, W]`` map, for NHWC inputs.

    PyTorch flattens NCHW maps in (C, H, W) order, advjax NHWC maps in (H, W, C) order:
    ``kernel[(h * W + w) * C + c, o] = weight[o, (c * H + h) * W + w]``.
    """
    c, h, w = chw
    weight = np.asarray(weight, np.float32)
    out = weight.shape[0]
    return weight.reshape(out, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, out)


def batch_norm_variables(
    weight: np.ndarray, bias: np.ndarray, running_mean: np.ndarray, running_var: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """PyTorch ``BatchNorm2d`` tensors -> Flax ``({scale, bias}, {mean, var})``."""
    f32 = lambda a: np.asarray(a, np.float32)
    return (
        {"scale": f32(weight), "bias": f32(bias)},
        {"mean": f32(running_mean), "var": f32(running_var)},
    )


# --- The mapping of one architecture ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Plan:
    """How one architecture's state_dict fills one advjax model.

    Attributes:
      model: the advjax model to fill.
      input_shape: HWC input used to trace the model's variable shapes.
      torch_name: Flax module path -> PyTorch module prefix.
      flattened: Flax paths of the dense layers that read a flattened conv map.
      skipped_prefixes: state_dict key prefixes that the PyTorch forward never reads.
      zero_if_missing: state_dict keys that may be absent (a zero tensor then).
    """

    model: nn.Module
    input_shape: tuple[int, int, int]
    torch_name: Callable[[ModulePath], str]
    flattened: frozenset[ModulePath] = frozenset()
    skipped_prefixes: tuple[str, ...] = ()
    zero_if_missing: frozenset[str] = frozenset()


def _shape(state: StateDict, key: str, axis: int, default: int) -> int:
    """``state[key].shape[axis]``, or ``default`` when the key is absent (then reported)."""
    value = state.get(key)
    shape = np.shape(value) if value is not None else ()
    return int(shape[axis]) if len(shape) > axis else default


def _residual_namer(
    top: Mapping[str, str], block: str, sub: Mapping[str, str]
) -> Callable[[ModulePath], str]:
    """Names for the zoo's ``<stage|group><s>_block<b>/<sub>`` modules: ``block.format(s, b - 1)``
    followed by the renamed submodule; other modules through ``top``."""

    def name(path: ModulePath) -> str:
        match = re.fullmatch(r"(?:stage|group)(\d+)_block(\d+)", path[0])
        if match is None:
            return top[path[0]]
        prefix = block.format(int(match[1]), int(match[2]) - 1)
        return f"{prefix}.{sub.get(path[1], path[1])}"

    return name


def _wide_resnet(
    state: StateDict, norm: dict, depth: int | None = None, width: int | None = None, **kwargs
) -> _Plan:
    blocks = {int(m[1]) for key in state if (m := re.match(r"block1\.layer\.(\d+)\.", key))}
    if depth is None:
        depth = 6 * len(blocks) + 4 if blocks else 28
    if width is None:
        width = max(_shape(state, "block1.layer.0.conv1.weight", 0, 160) // 16, 1)
    kwargs.setdefault("num_classes", _shape(state, "fc.weight", 0, 10))
    model = WideResNet(depth=depth, width=width, **norm, **kwargs)
    namer = _residual_namer(
        {"conv_stem": "conv1", "bn_final": "bn1", "fc": "fc"},
        "block{}.layer.{}",
        {"shortcut": "convShortcut"},
    )
    return _Plan(
        model,
        (32, 32, 3),
        namer,
        skipped_prefixes=("sub_block1.",),
        zero_if_missing=frozenset({"fc.bias"}),
    )


def _preact_resnet18(
    state: StateDict, norm: dict, preact_shortcut: bool = False, **kwargs
) -> _Plan:
    kwargs.setdefault("num_classes", _shape(state, "linear.weight", 0, 10))
    kwargs.setdefault("final_bn", "bn.weight" in state)
    model = PreActResNet18(**norm, preact_shortcut=preact_shortcut, **kwargs)
    namer = _residual_namer(
        {"conv_stem": "conv1", "bn_final": "bn", "fc": "linear"},
        "layer{}.{}",
        {"shortcut": "shortcut.0"},
    )
    return _Plan(model, (32, 32, 3), namer)


def _resnet18(state: StateDict, norm: dict, **kwargs) -> _Plan:
    kwargs.setdefault("num_classes", _shape(state, "linear.weight", 0, 10))
    model = ResNet18(**norm, **kwargs)
    namer = _residual_namer(
        {"conv_stem": "conv1", "bn_stem": "bn1", "fc": "linear"},
        "layer{}.{}",
        {"shortcut_conv": "shortcut.0", "shortcut_bn": "shortcut.1"},
    )
    return _Plan(model, (32, 32, 3), namer)


def _mnist(model_cls: type[nn.Module], names: Mapping[str, str], last: str) -> Callable[..., _Plan]:
    """An MNIST net whose modules map one to one onto ``names``; ``fc1`` reads the flatten."""

    def plan(state: StateDict, norm: dict, **kwargs) -> _Plan:
        kwargs.setdefault("num_classes", _shape(state, f"{names[last]}.weight", 0, 10))
        model = model_cls(**norm, **kwargs)
        return _Plan(model, (28, 28, 1), lambda path: names[path[0]], frozenset({("fc1",)}))

    return plan


_CNN4_NAMES = {
    **{f"conv{i}": f"feature_extractor.conv{i}" for i in range(1, 5)},
    **{f"fc{i}": f"classifier.fc{i}" for i in range(1, 4)},
}

#: arch name -> plan builder (the table in the module docstring); ``wrn-<d>-<k>`` is also accepted.
ARCHS: dict[str, Callable[..., _Plan]] = {
    "wide_resnet": _wide_resnet,
    "preact_resnet18": _preact_resnet18,
    "resnet18": _resnet18,
    "mnist_cnn4": _mnist(MnistCNN4, _CNN4_NAMES, "fc3"),
    "mnist_small": _mnist(MnistSmallCNN, {n: n for n in ("conv1", "conv2", "fc1", "fc2")}, "fc2"),
    "mnist_fast_at": _mnist(
        MnistFastATNet, {"conv1": "0", "conv2": "2", "fc1": "5", "fc2": "7"}, "fc2"
    ),
}
_WRN_NAME = re.compile(r"wrn-(\d+)-(\d+)")


def arch_names() -> tuple[str, ...]:
    """The accepted ``arch`` values (``wrn-<depth>-<width>`` stands for any depth and width)."""
    return (*ARCHS, "wrn-<depth>-<width>")


def _plan_builder(arch: str, kwargs: dict) -> Callable[..., _Plan]:
    """The plan builder of ``arch``; ``wrn-D-W`` puts ``depth`` and ``width`` into ``kwargs``."""
    match = _WRN_NAME.fullmatch(arch)
    if match is not None:
        if "depth" in kwargs or "width" in kwargs:
            raise ValueError(f"{arch!r} fixes depth and width; pass them in the name or as kwargs")
        kwargs.update(depth=int(match[1]), width=int(match[2]))
        return _wide_resnet
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(arch_names())}")
    return ARCHS[arch]


# --- Normalisation ------------------------------------------------------------------------------


def _normalization(
    state: dict[str, np.ndarray],
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    used: set[str],
) -> dict[str, tuple[float, ...]]:
    """The model's ``mean``/``std`` kwargs from the arguments and any normalisation buffers."""
    if (mean is None) != (std is None):
        raise ValueError("give both mean= and std=, or neither (no normalisation)")
    given = None if mean is None else (tuple(map(float, mean)), tuple(map(float, std)))
    for mean_key, std_key in NORMALIZATION_BUFFERS:
        if mean_key in state and std_key in state:
            stored = tuple(tuple(float(v) for v in np.ravel(state[k])) for k in (mean_key, std_key))
            if given is not None and not all(
                len(a) == len(b) and np.allclose(a, b, rtol=1e-6, atol=1e-7)
                for a, b in zip(given, stored, strict=True)
            ):
                raise ValueError(
                    f"mean={given[0]}, std={given[1]} disagree with the checkpoint's "
                    f"{mean_key!r}/{std_key!r} buffers {stored[0]}, {stored[1]}"
                )
            used.update((mean_key, std_key))
            given = stored
            break
    if given is None:
        return {"mean": (0.0,), "std": (1.0,)}
    return {"mean": given[0], "std": given[1]}


# --- Assembly -----------------------------------------------------------------------------------


class _Tensors:
    """The state_dict's tensors, handed out once each; problems are collected, not raised."""

    def __init__(self, state: Mapping[str, np.ndarray], used: set[str]):
        self.state = state
        self.used = used
        self.missing: list[str] = []
        self.misshaped: list[str] = []

    def take(self, key: str, shape: tuple[int, ...], optional: bool = False) -> np.ndarray:
        if key in self.used:
            raise RuntimeError(f"internal error: {key!r} mapped twice")
        if key not in self.state:
            if not optional:
                self.missing.append(key)
            return np.zeros(shape, np.float32)
        self.used.add(key)
        value = self.state[key]
        if tuple(np.shape(value)) != shape:
            self.misshaped.append(f"{key} {tuple(np.shape(value))} (expected {shape})")
            return np.zeros(shape, np.float32)
        return value

    def unexpected(self, skipped_prefixes: Sequence[str]) -> list[str]:
        return sorted(
            key
            for key in self.state
            if key not in self.used
            and not key.endswith(_IGNORED_SUFFIX)
            and not key.startswith(tuple(skipped_prefixes))
        )


def _modules(tree: Mapping[str, Any], path: ModulePath = ()) -> list[tuple[ModulePath, dict]]:
    """``(module path, {leaf name: leaf})`` for every module of a Flax variable collection."""
    leaves = {k: v for k, v in tree.items() if not isinstance(v, Mapping)}
    found = [(path, leaves)] if leaves else []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            found += _modules(value, (*path, key))
    return found


def _set(tree: dict, path: ModulePath, value: dict) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _flatten_shape(plan: _Plan, params: Any) -> tuple[int, int, int]:
    """``(C, H, W)`` of the map flattened before the first dense layer (shapes only)."""
    x = jax.ShapeDtypeStruct((1, *plan.input_shape), jnp.float32)
    _, state = jax.eval_shape(
        lambda p, x: plan.model.apply({"params": p}, x, train=False, mutable=[FEATURE_COLLECTION]),
        params,
        x,
    )
    (last_conv,) = state[FEATURE_COLLECTION]["last_conv"]
    _, h, w, c = last_conv.shape
    return c, h, w


def _assemble(plan: _Plan, state: Mapping[str, np.ndarray], used: set[str], arch: str) -> dict:
    """Fill the plan's model variables from ``state``; raise one error listing every problem."""
    shapes = jax.eval_shape(lambda: init_variables(plan.model, jax.random.key(0), plan.input_shape))
    tensors = _Tensors(state, used)
    params: dict = {}
    stats: dict = {}
    for path, leaves in _modules(shapes["params"]):
        prefix = plan.torch_name(path)
        if "scale" in leaves:
            (channels,) = leaves["scale"].shape
            get = lambda n, c=channels, p=prefix: tensors.take(f"{p}.{n}", (c,))
            names = ("weight", "bias", "running_mean", "running_var")
            module_params, module_stats = batch_norm_variables(*(get(n) for n in names))
            _set(params, path, module_params)
            _set(stats, path, module_stats)
            continue
        kernel = leaves["kernel"].shape
        if len(kernel) == 4:  # HWIO
            h, w, i, o = kernel
            module = {"kernel": conv_kernel(tensors.take(f"{prefix}.weight", (o, i, h, w)))}
        elif path in plan.flattened:
            weight = tensors.take(f"{prefix}.weight", kernel[::-1])
            module = {"kernel": dense_kernel_chw(weight, _flatten_shape(plan, shapes["params"]))}
        else:
            module = {"kernel": dense_kernel(tensors.take(f"{prefix}.weight", kernel[::-1]))}
        if "bias" in leaves:
            key = f"{prefix}.bias"
            bias = tensors.take(key, leaves["bias"].shape, optional=key in plan.zero_if_missing)
            module["bias"] = np.asarray(bias, np.float32)
        _set(params, path, module)

    unexpected = tensors.unexpected(plan.skipped_prefixes)
    problems = [
        f"{label}: {', '.join(keys)}"
        for label, keys in (
            ("missing keys", tensors.missing),
            ("unexpected keys", unexpected),
            ("mis-shaped keys", tensors.misshaped),
        )
        if keys
    ]
    if problems:
        raise ValueError(
            f"the state_dict does not match arch {arch!r} ({type(plan.model).__name__}): "
            + "; ".join(problems)
        )
    variables = {"params": params}
    if "batch_stats" in shapes:
        variables["batch_stats"] = stats
    return jax.tree.map(jnp.asarray, variables)


# --- Public API ---------------------------------------------------------------------------------


def convert_state_dict(
    arch: str,
    state_dict: StateDict,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **arch_kwargs: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """The advjax model of ``arch`` and its variables, filled from a PyTorch ``state_dict``.

    Args:
      arch: one of :func:`arch_names` (``wide_resnet``, ``wrn-28-10``, ``preact_resnet18``, ...).
      state_dict: parameter name -> numpy array or torch tensor (``model.state_dict()``).
      mean, std: per-channel input normalisation (``None``: none, or the checkpoint's buffers).
      **arch_kwargs: constructor kwargs of the advjax model that the keys do not determine
        (``preact_shortcut`` for ``preact_resnet18``) or that override what they determine
        (``num_classes``, ``depth``, ``width``; a wrong value fails the key and shape checks).

    Returns:
      ``(model, variables)``: ``model.apply(variables, x, train=False)`` on NHWC ``x`` in [0, 1]
      gives the PyTorch model's logits on ``x`` in NCHW.

    Raises:
      ValueError: an unknown arch (the message lists the valid ones), or a state_dict with
        missing, unexpected or mis-shaped keys (all named).
    """
    kwargs = dict(arch_kwargs)
    builder = _plan_builder(arch, kwargs)
    state = {str(key): to_numpy(value) for key, value in state_dict.items()}
    used: set[str] = set()
    norm = _normalization(state, mean, std, used)
    try:
        plan = builder(state, norm, **kwargs)
    except TypeError as err:
        raise TypeError(f"arch {arch!r}: {err}") from None
    return plan.model, _assemble(plan, state, used, arch)


def unwrap_state_dict(checkpoint: Any) -> dict[str, np.ndarray]:
    """The state_dict inside a loaded checkpoint, as numpy arrays.

    Looks through the usual containers (``{"state_dict": ...}``, ``{"model_state_dict": ...}``,
    ``{"model": ...}``, ``{"net": ...}``, nested) and drops a ``module.`` prefix that every key
    carries (``nn.DataParallel``).
    """
    obj = checkpoint
    while isinstance(obj, Mapping) and not all(hasattr(v, "shape") for v in obj.values()):
        inner = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            bad = sorted(str(k) for k, v in obj.items() if not hasattr(v, "shape"))
            raise ValueError(
                f"no state_dict found: entries {bad} are not tensors and none of "
                f"{list(CONTAINER_KEYS)} holds one"
            )
        obj = obj[inner]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"expected a state_dict (a mapping of tensors), got {type(obj).__name__}")
    state = {str(k): v for k, v in obj.items()}
    prefix = "module."
    strip = all(k.startswith(prefix) for k in state)
    return {(k[len(prefix) :] if strip else k): to_numpy(v) for k, v in state.items()}


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a PyTorch checkpoint file (``torch.load(..., weights_only=True)``, on CPU) and return
    its state_dict as numpy arrays (:func:`unwrap_state_dict`). Needs PyTorch."""
    try:
        import torch
    except ImportError as err:
        raise ImportError("reading a .pt file needs PyTorch: pip install torch") from err
    checkpoint = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    return unwrap_state_dict(checkpoint)
