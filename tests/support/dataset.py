"""Tiny models and generated image folders shared by the dataset tests."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.transforms import v2

from fxtap.dataset._demo import make_images


class TinyNet(nn.Module):
    """conv -> relu -> conv (stride 2) -> pool -> fc; taps: ``conv2`` ``[N, 8, 7, 7]``, ``fc``."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.relu(self.conv1(x))) * self.scale
        return self.fc(self.pool(x).flatten(1))


def tiny_model(seed: int = 0, scale: float = 1.0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(scale)


TRANSFORM = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


def image_folder(root: Path, count: int = 20, size: int = 18) -> torchvision.datasets.ImageFolder:
    make_images(root, count=count, size=size)
    return torchvision.datasets.ImageFolder(str(root), transform=TRANSFORM)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, with its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def job_files(folder: Path, model_file: str, data_file: str) -> Path:
    """``folder`` holding ``net.py`` and ``data.py``, the files a ``fxtap run`` test names."""
    (folder / "net.py").write_text(model_file)
    (folder / "data.py").write_text(data_file)
    return folder
