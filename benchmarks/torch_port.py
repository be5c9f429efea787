"""PyTorch twins of the advjax zoo models and an eager PyTorch PGD loop.

Used by ``benchmarks/pgd_vs_torch.py`` (timing) and ``tests/test_torch_port.py`` (equivalence); the
CIFAR twins are for speed comparisons on the same weights (issue 21).

* :class:`TorchCNN4`: the TRADES ``SmallCNN`` in NCHW (conv 32 3x3, conv 32 3x3, maxpool 2,
  conv 64 3x3, conv 64 3x3, maxpool 2, FC 200, FC 200, FC, ReLU everywhere, VALID padding).
* :func:`from_flax`: copies Flax ``MnistCNN4`` params into a ``TorchCNN4`` (conv kernels
  HWIO -> OIHW, dense kernels transposed, the rows of the first FC kernel permuted from the Flax
  (H, W, C) flatten order to the PyTorch (C, H, W) order). Logits then match to float precision.
* :class:`TorchSmallCNN` / :func:`small_from_flax` and :class:`TorchFastATNet` /
  :func:`fast_at_from_flax`: the same for ``MnistSmallCNN`` and ``MnistFastATNet``.
* :class:`TorchResNet20` / :func:`resnet20_from_flax`, :class:`TorchPreActResNet18` /
  :func:`preact_resnet18_from_flax` and :class:`TorchWideResNet` / :func:`wide_resnet_from_flax`:
  the CIFAR zoo models (``ResNet20``, ``PreActResNet18``, ``WideResNet(depth, width)``) in NCHW,
  CIFAR-10 normalisation included, with the zoo's submodule names (``conv_stem``,
  ``stage1_block1.conv1``, ...). The converters copy ``params`` and ``batch_stats`` (conv kernels
  HWIO -> OIHW, dense kernels transposed, BatchNorm scale/bias/mean/var into weight/bias/
  running_mean/running_var, eps 1e-5) and check that every Flax variable is used exactly once;
  depth and width are inferred from the params.
* :func:`port` picks the twin by advjax model name (``mnist_cnn4``, ``mnist_small``,
  ``mnist_fast_at``, ``resnet20``, ``preact_resnet18``, ``wide_resnet``).
* :func:`torch_pgd`: the usual eager PGD loop (torchattacks ``PGD``: uniform random start, sign
  step, clamp to the Linf ball and to [0, 1], ``torch.autograd.grad`` w.r.t. the input only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class TorchCNN4(nn.Module):
    """NCHW PyTorch version of ``MnistCNN4`` (input ``[B, C, 28, 28]`` in [0, 1])."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3)
        self.conv2 = nn.Conv2d(32, 32, 3)
        self.conv3 = nn.Conv2d(32, 64, 3)
        self.conv4 = nn.Conv2d(64, 64, 3)
        self.fc1 = nn.Linear(64 * 4 * 4, 200)
        self.fc2 = nn.Linear(200, 200)
        self.fc3 = nn.Linear(200, num_classes)
        self.identity_norm = all(m == 0.0 for m in mean) and all(s == 1.0 for s in std)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.identity_norm:
            x = (x - self.mean) / self.std
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        x = F.max_pool2d(F.relu(self.conv4(x)), 2)
        x = torch.flatten(x, 1)  # (C, H, W) order; from_flax permutes fc1 to match
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _t(a: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


def from_flax(params: Mapping[str, Any], flax_model: Any = None) -> TorchCNN4:
    """A ``TorchCNN4`` (eval mode, frozen weights) with the weights of Flax ``MnistCNN4`` params.

    Args:
      params: the ``'params'`` collection of ``MnistCNN4`` (or the whole variables dict).
      flax_model: optional ``MnistCNN4`` instance, to copy ``mean``/``std``.
    """
    if "params" in params:
        params = params["params"]
    conv1 = np.asarray(params["conv1"]["kernel"])
    fc1 = np.asarray(params["fc1"]["kernel"])  # [H*W*C, 200], rows in (H, W, C) order
    fc3 = np.asarray(params["fc3"]["kernel"])
    kwargs = {}
    if flax_model is not None:
        kwargs = {"mean": tuple(flax_model.mean), "std": tuple(flax_model.std)}
    model = TorchCNN4(num_classes=fc3.shape[1], in_channels=conv1.shape[2], **kwargs)
    channels = np.asarray(params["conv4"]["kernel"]).shape[3]
    side = int(round((fc1.shape[0] // channels) ** 0.5))
    with torch.no_grad():
        for name in ("conv1", "conv2", "conv3", "conv4"):
            layer = getattr(model, name)
            kernel = np.asarray(params[name]["kernel"])  # HWIO
            layer.weight.copy_(_t(kernel.transpose(3, 2, 0, 1)))  # OIHW
            layer.bias.copy_(_t(params[name]["bias"]))
        # (H, W, C) rows -> (C, H, W) rows, then [out, in].
        fc1_chw = fc1.reshape(side, side, channels, -1).transpose(2, 0, 1, 3).reshape(fc1.shape)
        model.fc1.weight.copy_(_t(fc1_chw.T))
        model.fc1.bias.copy_(_t(params["fc1"]["bias"]))
        for name in ("fc2", "fc3"):
            layer = getattr(model, name)
            layer.weight.copy_(_t(np.asarray(params[name]["kernel"]).T))
            layer.bias.copy_(_t(params[name]["bias"]))
    model.eval()
    model.requires_grad_(False)  # the attack only needs d loss / d input
    return model


class TorchSmallCNN(nn.Module):
    """NCHW PyTorch version of ``MnistSmallCNN`` (Madry et al.: conv 32 5x5 SAME, maxpool 2,
    conv 64 5x5 SAME, maxpool 2, FC 1024, FC; identity normalisation)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * 7 * 7, 1024)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def small_from_flax(params: Mapping[str, Any]) -> TorchSmallCNN:
    """A ``TorchSmallCNN`` (eval mode, frozen) with the weights of Flax ``MnistSmallCNN`` params."""
    return _two_conv_two_fc_from_flax(TorchSmallCNN, params)


class TorchFastATNet(nn.Module):
    """NCHW PyTorch version of ``MnistFastATNet`` (Wong et al. 2020: conv 16 4x4 stride 2 pad 1,
    conv 32 4x4 stride 2 pad 1, FC 100, FC; identity normalisation)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 4, stride=2, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 100)
        self.fc2 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def _two_conv_two_fc_from_flax(model_cls: type[nn.Module], params: Mapping[str, Any]) -> Any:
    """``model_cls(num_classes, in_channels)`` with Flax conv1, conv2, fc1, fc2 params copied in
    (fc1 rows permuted from (H, W, C) to (C, H, W) order); eval mode, frozen."""
    if "params" in params:
        params = params["params"]
    fc1 = np.asarray(params["fc1"]["kernel"])  # [side*side*C, hidden], rows in (H, W, C) order
    fc2 = np.asarray(params["fc2"]["kernel"])
    conv1 = np.asarray(params["conv1"]["kernel"])
    channels = np.asarray(params["conv2"]["kernel"]).shape[3]
    side = int(round((fc1.shape[0] // channels) ** 0.5))
    model = model_cls(fc2.shape[1], conv1.shape[2])
    with torch.no_grad():
        for name in ("conv1", "conv2"):
            layer = getattr(model, name)
            layer.weight.copy_(_t(np.asarray(params[name]["kernel"]).transpose(3, 2, 0, 1)))
            layer.bias.copy_(_t(params[name]["bias"]))
        fc1_chw = fc1.reshape(side, side, channels, -1).transpose(2, 0, 1, 3).reshape(fc1.shape)
        model.fc1.weight.copy_(_t(fc1_chw.T))
        model.fc1.bias.copy_(_t(params["fc1"]["bias"]))
        model.fc2.weight.copy_(_t(fc2.T))
        model.fc2.bias.copy_(_t(params["fc2"]["bias"]))
    model.eval()
    model.requires_grad_(False)
    return model


def fast_at_from_flax(params: Mapping[str, Any]) -> TorchFastATNet:
    """A ``TorchFastATNet`` (eval mode, frozen) with the Flax ``MnistFastATNet`` params."""
    return _two_conv_two_fc_from_flax(TorchFastATNet, params)


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """The zoo's conv: PyTorch padding k // 2, no bias unless asked."""
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=bias)


def _bn(channels: int) -> nn.BatchNorm2d:
    """The zoo's BatchNorm: eps 1e-5, momentum 0.1 (Flax's 0.9)."""
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


class _Normalized(nn.Module):
    """Holds the input normalisation ``(x - mean) / std`` as buffers (NCHW)."""

    def _init_norm(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.identity_norm = all(m == 0.0 for m in mean) and all(s == 1.0 for s in std)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.identity_norm else (x - self.mean) / self.std


class TorchBasicBlock(nn.Module):
    """Post-activation block of ``ResNet20``: relu(bn2(conv2(relu(bn1(conv1(x))))) + s(x)),
    ``s`` a 1x1 strided conv *with* bias when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv(in_ch, out_ch, 3, stride)
        self.bn1 = _bn(out_ch)
        self.conv2 = _conv(out_ch, out_ch, 3)
        self.bn2 = _bn(out_ch)
        self.shortcut = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = _conv(in_ch, out_ch, 1, stride, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class TorchResNet20(_Normalized):
    """NCHW PyTorch version of ``ResNet20`` (CIFAR ResNet-(6n+2); input ``[B, 3, H, W]`` in
    [0, 1])."""

    def __init__(
        self,
        num_classes: int = 10,
        depth: int = 20,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"ResNet depth must be 6n+2 with n >= 1, got {depth}")
        self._init_norm(mean, std)
        self.conv_stem = _conv(3, 16, 3)
        self.bn_stem = _bn(16)
        self.block_names: list[str] = []
        in_ch = 16
        for stage, width in enumerate((16, 32, 64)):
            for block in range((depth - 2) // 6):
                stride = 2 if stage > 0 and block == 0 else 1
                name = f"stage{stage + 1}_block{block + 1}"
                self.add_module(name, TorchBasicBlock(in_ch, width, stride))
                self.block_names.append(name)
                in_ch = width
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_stem(self.conv_stem(self._normalize(x))))
        for name in self.block_names:
            x = getattr(self, name)(x)
        return self.fc(x.mean(dim=(2, 3)))


class TorchPreActBlock(nn.Module):
    """Pre-activation block of ``PreActResNet18`` and ``WideResNet`` (TRADES ``BasicBlock``):
    ``out = relu(bn1(x)); conv2(relu(bn2(conv1(out)))) + s``, ``s = x`` when the block keeps width
    and stride, else a 1x1 strided conv (no bias) of ``out``."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.bn1 = _bn(in_ch)
        self.conv1 = _conv(in_ch, out_ch, 3, stride)
        self.bn2 = _bn(out_ch)
        self.conv2 = _conv(out_ch, out_ch, 3)
        self.shortcut = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = _conv(in_ch, out_ch, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        y = F.relu(self.bn2(self.conv1(out)))
        return self.conv2(y) + shortcut


class _TorchPreActNet(_Normalized):
    """conv stem, named pre-activation blocks, final BN-ReLU, global average pool, dense."""

    def _build(
        self, stem: int, prefix: str, widths: Sequence[int], blocks: int, num_classes: int
    ) -> None:
        self.conv_stem = _conv(3, stem, 3)
        self.block_names: list[str] = []
        in_ch = stem
        for stage, width in enumerate(widths):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                name = f"{prefix}{stage + 1}_block{block + 1}"
                self.add_module(name, TorchPreActBlock(in_ch, width, stride))
                self.block_names.append(name)
                in_ch = width
        self.bn_final = _bn(in_ch)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_stem(self._normalize(x))
        for name in self.block_names:
            x = getattr(self, name)(x)
        x = F.relu(self.bn_final(x))
        return self.fc(x.mean(dim=(2, 3)))


class TorchPreActResNet18(_TorchPreActNet):
    """NCHW PyTorch version of ``PreActResNet18`` (Wong et al. 2020; input ``[B, 3, H, W]`` in
    [0, 1])."""

    def __init__(
        self,
        num_classes: int = 10,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ):
        super().__init__()
        self._init_norm(mean, std)
        self._build(64, "stage", (64, 128, 256, 512), 2, num_classes)


class TorchWideResNet(_TorchPreActNet):
    """NCHW PyTorch version of ``WideResNet(depth, width)`` (TRADES layout, no dropout; input
    ``[B, 3, H, W]`` in [0, 1])."""

    def __init__(
        self,
        depth: int = 28,
        width: int = 10,
        num_classes: int = 10,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0 or width < 1:
            raise ValueError(
                f"WideResNet needs depth 6n+4 >= 10 and width >= 1, got depth={depth}, "
                f"width={width}"
            )
        self._init_norm(mean, std)
        widths = tuple(c * width for c in (16, 32, 64))
        self._build(16, "group", widths, (depth - 4) // 6, num_classes)


def _split_variables(variables: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    if "params" not in variables:
        raise ValueError("the CIFAR ports need the whole variables dict (params and batch_stats)")
    return variables["params"], variables.get("batch_stats", {})


def _leaf_paths(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    paths: set[tuple[str, ...]] = set()
    for key, value in tree.items():
        if isinstance(value, Mapping):
            paths |= _leaf_paths(value, (*prefix, key))
        else:
            paths.add((*prefix, key))
    return paths


def _load_flax(model: nn.Module, variables: Mapping[str, Any]) -> Any:
    """Copy Flax ``params``/``batch_stats`` into ``model``, whose submodule paths are the Flax
    module paths (``a.b`` <-> ``['a']['b']``); eval mode, frozen. Every Flax variable must be used
    exactly once and every shape must match (no broadcasting)."""
    params, stats = _split_variables(variables)
    used: set[tuple[str, ...]] = set()

    def get(collection: str, tree: Mapping[str, Any], path: tuple[str, ...]) -> np.ndarray:
        node: Any = tree
        for key in path:
            if not isinstance(node, Mapping) or key not in node:
                raise KeyError(f"no Flax {collection} {'/'.join(path)!r} for the PyTorch twin")
            node = node[key]
        used.add((collection, *path))
        return np.asarray(node, dtype=np.float32)

    def put(target: torch.Tensor, value: np.ndarray, path: tuple[str, ...]) -> None:
        if tuple(target.shape) != value.shape:
            raise ValueError(
                f"shape mismatch at {'/'.join(path)}: Flax {value.shape} (converted) vs PyTorch "
                f"{tuple(target.shape)}"
            )
        target.copy_(_t(value))

    with torch.no_grad():
        for name, module in model.named_modules():
            path = tuple(name.split(".")) if name else ()
            if isinstance(module, nn.Conv2d):
                kernel = get("params", params, (*path, "kernel"))  # HWIO
                put(module.weight, kernel.transpose(3, 2, 0, 1), (*path, "kernel"))  # OIHW
                if module.bias is not None:
                    put(module.bias, get("params", params, (*path, "bias")), (*path, "bias"))
            elif isinstance(module, nn.Linear):
                put(module.weight, get("params", params, (*path, "kernel")).T, (*path, "kernel"))
                put(module.bias, get("params", params, (*path, "bias")), (*path, "bias"))
            elif isinstance(module, nn.BatchNorm2d):
                for flax_name, target, tree, collection in (
                    ("scale", module.weight, params, "params"),
                    ("bias", module.bias, params, "params"),
                    ("mean", module.running_mean, stats, "batch_stats"),
                    ("var", module.running_var, stats, "batch_stats"),
                ):
                    put(target, get(collection, tree, (*path, flax_name)), (*path, flax_name))
    expected = {("params", *p) for p in _leaf_paths(params)}
    expected |= {("batch_stats", *p) for p in _leaf_paths(stats)}
    if expected != used:
        unused = sorted("/".join(p) for p in expected - used)
        raise ValueError(f"Flax variables without a PyTorch counterpart: {', '.join(unused)}")
    model.eval()
    model.requires_grad_(False)
    return model


def _norm_kwargs(flax_model: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``mean``/``std`` from ``kwargs``, else from the Flax model, else the twin's defaults."""
    out = dict(kwargs)
    if flax_model is not None:
        for attr in ("mean", "std"):
            out.setdefault(attr, tuple(getattr(flax_model, attr)))
    return out


def _blocks(params: Mapping[str, Any], prefix: str) -> int:
    return sum(1 for key in params if key.startswith(f"{prefix}1_block"))


def resnet20_from_flax(
    variables: Mapping[str, Any], flax_model: Any = None, **kwargs: Any
) -> TorchResNet20:
    """A ``TorchResNet20`` (eval mode, frozen) with the Flax ``ResNet20`` variables.

    ``depth`` and ``num_classes`` come from the params; ``mean``/``std`` from ``kwargs``, else
    ``flax_model``, else CIFAR-10.
    """
    params, _ = _split_variables(variables)
    kwargs = _norm_kwargs(flax_model, kwargs)
    kwargs.setdefault("depth", 6 * _blocks(params, "stage") + 2)
    kwargs.setdefault("num_classes", np.shape(params["fc"]["kernel"])[1])
    return _load_flax(TorchResNet20(**kwargs), variables)


def preact_resnet18_from_flax(
    variables: Mapping[str, Any], flax_model: Any = None, **kwargs: Any
) -> TorchPreActResNet18:
    """A ``TorchPreActResNet18`` (eval mode, frozen) with the Flax ``PreActResNet18`` variables."""
    params, _ = _split_variables(variables)
    kwargs = _norm_kwargs(flax_model, kwargs)
    kwargs.setdefault("num_classes", np.shape(params["fc"]["kernel"])[1])
    return _load_flax(TorchPreActResNet18(**kwargs), variables)


def wide_resnet_from_flax(
    variables: Mapping[str, Any], flax_model: Any = None, **kwargs: Any
) -> TorchWideResNet:
    """A ``TorchWideResNet`` (eval mode, frozen) with the Flax ``WideResNet`` variables.

    ``depth``, ``width`` and ``num_classes`` are inferred from the params unless given (a given
    value that disagrees with the params fails the shape check).
    """
    params, _ = _split_variables(variables)
    kwargs = _norm_kwargs(flax_model, kwargs)
    kwargs.setdefault("depth", 6 * _blocks(params, "group") + 4)
    kwargs.setdefault("width", np.shape(params["group1_block1"]["conv1"]["kernel"])[3] // 16)
    kwargs.setdefault("num_classes", np.shape(params["fc"]["kernel"])[1])
    return _load_flax(TorchWideResNet(**kwargs), variables)


_MNIST_PORTS = {
    "mnist_cnn4": from_flax,
    "mnist_small": small_from_flax,
    "mnist_fast_at": fast_at_from_flax,
}
_CIFAR_PORTS = {
    "resnet20": resnet20_from_flax,
    "preact_resnet18": preact_resnet18_from_flax,
    "wide_resnet": wide_resnet_from_flax,
}


def port(
    model_name: str, variables: Mapping[str, Any], flax_model: Any = None, **kwargs: Any
) -> nn.Module:
    """The PyTorch twin (eval mode, frozen) of an advjax zoo model, with its Flax ``variables``.

    Args:
      model_name: ``mnist_cnn4``, ``mnist_small``, ``mnist_fast_at``, ``resnet20``,
        ``preact_resnet18`` or ``wide_resnet``.
      variables: the Flax variables (the CIFAR models need ``params`` and ``batch_stats``).
      flax_model: optional zoo model instance, to copy its ``mean``/``std``.
      **kwargs: CIFAR models only: constructor kwargs of the twin (``depth``, ``width``,
        ``num_classes``, ``mean``, ``std``); those not given are inferred from the params.
    """
    if model_name in _MNIST_PORTS:
        if kwargs:
            raise TypeError(f"port({model_name!r}) takes no constructor kwargs: {sorted(kwargs)}")
        if model_name == "mnist_cnn4":
            return from_flax(variables, flax_model)
        if flax_model is not None and (
            any(m != 0.0 for m in flax_model.mean) or any(s != 1.0 for s in flax_model.std)
        ):
            raise ValueError(f"the PyTorch twin of {model_name!r} has no input normalisation")
        return _MNIST_PORTS[model_name](variables)
    if model_name in _CIFAR_PORTS:
        return _CIFAR_PORTS[model_name](variables, flax_model, **kwargs)
    ported = ", ".join([*_MNIST_PORTS, *_CIFAR_PORTS])
    raise ValueError(f"no PyTorch port of {model_name!r}; ported: {ported}")


def nhwc_to_nchw(x: Any) -> torch.Tensor:
    """NHWC numpy/JAX array -> contiguous NCHW float32 torch tensor."""
    return torch.from_numpy(np.array(x, dtype=np.float32).transpose(0, 3, 1, 2).copy())


def torch_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float = 0.3,
    step_size: float = 0.01,
    steps: int = 20,
    random_init: bool = True,
    x_init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Eager Linf PGD (torchattacks ``PGD``): last iterate, cross-entropy, model in eval mode.

    The start is ``x_init`` when given (e.g. advjax's random start, to compare the two loops step
    for step), else uniform in the ball (``random_init``), else ``x`` itself. The loss is summed
    over the batch (torchattacks averages it; the sign step is the same).
    """
    x = x.detach()
    if x_init is not None:
        x_adv = x_init.detach().clone()
    elif random_init:
        noise = torch.empty_like(x).uniform_(-eps, eps, generator=generator)
        x_adv = torch.clamp(x + noise, 0.0, 1.0)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, [x_adv])
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0.0, 1.0)
    return x_adv.detach()
