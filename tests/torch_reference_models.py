"""PyTorch reference models for tests/test_torch_import.py, with the published module names.

Each class follows a published definition's submodule names, shapes and forward pass (written
here, not copied), so that its ``state_dict`` has the keys of the real checkpoints:

* :class:`RobustBenchWideResNet`: RobustBench ``model_zoo/architectures/wide_resnet.py`` (from
  TRADES ``models/wideresnet.py``): ``conv1``, ``block<g>.layer.<i>.{bn1, conv1, bn2, conv2,
  convShortcut}``, ``bn1``, ``fc``; ``sub_block1`` and ``bias_last`` as in RobustBench.
* :class:`RobustBenchPreActResNet18`: RobustBench ``PreActResNet(PreActBlock, [2, 2, 2, 2])``
  (Wong et al.'s ``preact_resnet.py`` with ``bn_before_fc=True``): ``conv1``,
  ``layer<s>.<i>.{bn1, conv1, bn2, conv2, shortcut.0}``, ``bn``, ``linear``.
* :class:`CifarResNet18`: kuangliu/pytorch-cifar ``ResNet18``: ``conv1``, ``bn1``,
  ``layer<s>.<i>.{conv1, bn1, conv2, bn2, shortcut.0, shortcut.1}``, ``linear``.
* :class:`TradesSmallCNN`: TRADES ``models/small_cnn.py``: ``feature_extractor.conv{1..4}``,
  ``classifier.fc{1..3}`` (dropout after ``fc1``).
* :class:`MadryMnistCNN`: Madry et al.'s MNIST CNN named ``conv1``, ``conv2``, ``fc1``, ``fc2``.
* :func:`fast_at_mnist_net`: Wong et al.'s ``mnist_net()`` ``nn.Sequential`` (keys ``0``, ``2``,
  ``5``, ``7``).

The CIFAR models take ``mean``/``std`` and then hold them as ``mu``/``sigma`` buffers and normalise
first, as RobustBench's wrappers do. :func:`randomize` draws every parameter and BatchNorm running
statistic, so that a wrong mapping of any tensor changes the outputs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, padding=0, bias=False)


class _Normalized(nn.Module):
    """Optional ``(x - mu) / sigma`` buffers (RobustBench's wrappers)."""

    def _init_norm(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        self.normalizes = mean is not None
        if self.normalizes:
            self.register_buffer("mu", torch.tensor(mean).view(1, -1, 1, 1))
            self.register_buffer("sigma", torch.tensor(std).view(1, -1, 1, 1))

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mu) / self.sigma if self.normalizes else x


# --- WideResNet (RobustBench / TRADES) ---------------------------------------------------------


class WideBlock(nn.Module):
    """Pre-activation block; a width change reads relu(bn1(x)) in both branches."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3(cout, cout)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else _conv1(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        residual = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return residual + (x if self.equal else self.convShortcut(act))


class WideGroup(nn.Module):
    """RobustBench's ``NetworkBlock``: the blocks in ``self.layer``."""

    def __init__(self, n: int, cin: int, cout: int, stride: int):
        super().__init__()
        blocks = [
            WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)
        ]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class RobustBenchWideResNet(_Normalized):
    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        sub_block1: bool = False,
        bias_last: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__()
        self._init_norm(mean, std)
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = _conv3(3, widths[0])
        self.block1 = WideGroup(n, widths[0], widths[1], 1)
        if sub_block1:  # an unused copy of block1, kept in some RobustBench checkpoints
            self.sub_block1 = WideGroup(n, widths[0], widths[1], 1)
        self.block2 = WideGroup(n, widths[1], widths[2], 2)
        self.block3 = WideGroup(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes, bias=bias_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self._normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn1(out))
        return self.fc(F.avg_pool2d(out, 8).flatten(1))


# --- PreAct-ResNet-18 (RobustBench / Wong et al.) ----------------------------------------------


class PreActBlock(nn.Module):
    """Pre-activation block; the projection shortcut reads ``x`` (or ``relu(bn1(x))`` with
    ``out_shortcut``)."""

    def __init__(self, cin: int, cout: int, stride: int, out_shortcut: bool):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3(cout, cout)
        self.out_shortcut = out_shortcut
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(_conv1(cin, cout, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        shortcut = x
        if hasattr(self, "shortcut"):
            shortcut = self.shortcut(act if self.out_shortcut else x)
        return self.conv2(F.relu(self.bn2(self.conv1(act)))) + shortcut


def _stages(block, widths: Sequence[int], stem: int, **kwargs) -> list[nn.Sequential]:
    stages, cin = [], stem
    for s, width in enumerate(widths):
        blocks = []
        for i in range(2):
            blocks.append(block(cin, width, 2 if s > 0 and i == 0 else 1, **kwargs))
            cin = width
        stages.append(nn.Sequential(*blocks))
    return stages


class RobustBenchPreActResNet18(_Normalized):
    def __init__(
        self,
        num_classes: int = 10,
        bn_before_fc: bool = True,
        out_shortcut: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__()
        self._init_norm(mean, std)
        self.conv1 = _conv3(3, 64)
        stages = _stages(PreActBlock, (64, 128, 256, 512), 64, out_shortcut=out_shortcut)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn_before_fc = bn_before_fc
        if bn_before_fc:
            self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self._normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.bn_before_fc:
            out = F.relu(self.bn(out))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


# --- ResNet-18 (kuangliu/pytorch-cifar) --------------------------------------------------------


class BasicBlock(nn.Module):
    """Post-activation block with a conv1x1 + BN projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _conv3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(_conv1(cin, cout, stride), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class CifarResNet18(_Normalized):
    def __init__(
        self,
        num_classes: int = 10,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__()
        self._init_norm(mean, std)
        self.conv1 = _conv3(3, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1, self.layer2, self.layer3, self.layer4 = _stages(
            BasicBlock, (64, 128, 256, 512), 64
        )
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self._normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


# --- MNIST CNNs --------------------------------------------------------------------------------


class TradesSmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, drop: float = 0.5):
        super().__init__()
        self.feature_extractor = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(1, 32, 3),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(32, 32, 3),
                relu2=nn.ReLU(),
                maxpool1=nn.MaxPool2d(2, 2),
                conv3=nn.Conv2d(32, 64, 3),
                relu3=nn.ReLU(),
                conv4=nn.Conv2d(64, 64, 3),
                relu4=nn.ReLU(),
                maxpool2=nn.MaxPool2d(2, 2),
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(64 * 4 * 4, 200),
                relu1=nn.ReLU(),
                drop=nn.Dropout(drop),
                fc2=nn.Linear(200, 200),
                relu2=nn.ReLU(),
                fc3=nn.Linear(200, num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.feature_extractor(x).flatten(1))


class MadryMnistCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * 7 * 7, 1024)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def fast_at_mnist_net(num_classes: int = 10) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


# --- Random weights -----------------------------------------------------------------------------


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """He-scaled weights, non-zero biases, BatchNorm scales in [0.5, 1.5] and random running
    statistics (mean ~ N(0, 0.2^2), var in [0.5, 2]); returns ``model`` in eval mode."""
    gen = torch.Generator().manual_seed(seed)

    def draw(shape, scale=1.0, low=None, high=None):
        if low is not None:
            return torch.rand(shape, generator=gen) * (high - low) + low
        return torch.randn(shape, generator=gen) * scale

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(draw(module.weight.shape, (2.0 / fan_in) ** 0.5))
            if module.bias is not None:
                module.bias.copy_(draw(module.bias.shape, 0.1))
        elif isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.weight.copy_(draw(c, low=0.5, high=1.5))
            module.bias.copy_(draw(c, 0.1))
            module.running_mean.copy_(draw(c, 0.2))
            module.running_var.copy_(draw(c, low=0.5, high=2.0))
    return model.eval()
