"""A compact plain CNN (9 convolutions with batch norm), written in plain torch.

Every module here also gives its class activation maps (Zhou et al., CVPR 2016) beside the logits
(``logits_and_maps``): the head's linear layer applied at each position of the last features, so that a
class's logit is the spatial mean of its map; ``WithClassActivationMaps`` exports both.
"""
from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class PlainCNN(nn.Module):
    """conv(s2) → conv(s2) → conv → pool → 2 × [conv, conv, pool] minus the last pool → 1x1 conv → GAP → linear.

    Nine convolutions; ``width`` scales the channel counts.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 24, dropout: float = 0.3):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_bn(in_channels, w, stride=2),
            conv_bn(w, 2 * w, stride=2),
            conv_bn(2 * w, 2 * w),
            nn.MaxPool2d(2),
            conv_bn(2 * w, 4 * w),
            conv_bn(4 * w, 4 * w),
            nn.MaxPool2d(2),
            conv_bn(4 * w, 8 * w),
            conv_bn(8 * w, 8 * w),
            conv_bn(8 * w, 12 * w, kernel=1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(12 * w, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(self.features(x))

    def _logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(torch.flatten(self.pool(features), 1)))

    def logits_and_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, classes) and class activation maps (N, classes, h, w) from one pass of the features."""
        features = self.features(x)
        maps = nn.functional.conv2d(features, self.head.weight[:, :, None, None], self.head.bias)
        return self._logits(features), maps


class MeanEnsemble(nn.Module):
    """Mean of the logits of several networks (exported as one graph)."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members], dim=0).mean(dim=0)

    def logits_and_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The members' logits and maps, each averaged like ``forward`` averages the logits."""
        logits, maps = zip(*(m.logits_and_maps(x) for m in self.members), strict=True)
        return torch.stack(logits, dim=0).mean(dim=0), torch.stack(maps, dim=0).mean(dim=0)


class WithTemperature(nn.Module):
    """Divides the logits by a fitted temperature (folded into the exported graph)."""

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.register_buffer("inv_t", torch.tensor(1.0 / temperature, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.inv_t

    def logits_and_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and maps, both divided by the temperature (a map's mean stays its logit)."""
        logits, maps = self.model.logits_and_maps(x)
        return logits * self.inv_t, maps * self.inv_t


class WithClassActivationMaps(nn.Module):
    """Exports ``model``'s logits and class activation maps as two graph outputs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.logits_and_maps(x)
