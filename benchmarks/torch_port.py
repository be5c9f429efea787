"""PyTorch twins of the advjax MNIST CNNs and an eager PyTorch PGD loop.

Used by ``benchmarks/pgd_vs_torch.py`` (timing) and ``tests/test_torch_port.py`` (equivalence).

* :class:`TorchCNN4`: the TRADES ``SmallCNN`` in NCHW (conv 32 3x3, conv 32 3x3, maxpool 2,
  conv 64 3x3, conv 64 3x3, maxpool 2, FC 200, FC 200, FC, ReLU everywhere, VALID padding).
* :func:`from_flax`: copies Flax ``MnistCNN4`` params into a ``TorchCNN4`` (conv kernels
  HWIO -> OIHW, dense kernels transposed, the rows of the first FC kernel permuted from the Flax
  (H, W, C) flatten order to the PyTorch (C, H, W) order). Logits then match to float precision.
* :class:`TorchSmallCNN` / :func:`small_from_flax` and :class:`TorchFastATNet` /
  :func:`fast_at_from_flax`: the same for ``MnistSmallCNN`` and ``MnistFastATNet``; :func:`port`
  picks the twin by advjax model name.
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


def port(model_name: str, variables: Mapping[str, Any]) -> nn.Module:
    """The PyTorch twin of an advjax MNIST model (``mnist_cnn4``, ``mnist_small``,
    ``mnist_fast_at``)."""
    ports = {
        "mnist_cnn4": from_flax,
        "mnist_small": small_from_flax,
        "mnist_fast_at": fast_at_from_flax,
    }
    if model_name not in ports:
        raise ValueError(f"no PyTorch port of {model_name!r}; ported: {', '.join(ports)}")
    return ports[model_name](variables)


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
