"""Models of the capture-path tests: roots that iterate over lists, parametrized modules."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Block(nn.Module):
    """A transformer-like block with an optional mask (``None`` by default)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc2(self.fc1(self.norm(x)).relu())
        if mask is not None:
            h = h * mask
        return x + h


class Stack(nn.Module):
    """A ViT-like stack whose root iterates over a list of images (untraceable root)."""

    def __init__(self, depth: int = 6, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.heads = nn.ModuleDict({"cls": nn.Linear(width, 3)})

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for img in images:
            x = self.embed(img)
            for block in self.blocks:
                x = block(x, None)
            outs.append(self.heads["cls"](x.mean(0)))
        return outs


class PositionalConv(nn.Module):
    """wav2vec2's positional embedding: a grouped convolution under weight_norm over time."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        conv = nn.Conv1d(width, width, 5, padding=2, groups=2)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + nn.functional.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)


class Wav2Vec2Like(nn.Module):
    """Feature convolution, weight-norm positional convolution, spectral and orthogonal norms."""

    def __init__(self, lists: bool) -> None:
        super().__init__()
        self.lists = lists
        self.feature = nn.Conv1d(1, 8, 10, stride=5)
        self.pos = PositionalConv()
        self.proj = nn.utils.parametrizations.spectral_norm(nn.Linear(8, 8))
        self.out = nn.utils.parametrizations.orthogonal(nn.Linear(8, 8))

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        return self.out(self.proj(self.pos(self.feature(wav).transpose(1, 2))))

    def forward(self, wavs: Any) -> Any:
        return [self.encode(w[None]) for w in wavs] if self.lists else self.encode(wavs)
