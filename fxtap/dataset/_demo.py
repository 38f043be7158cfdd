"""A small dataset job on generated images, for ``make demo`` and a first look."""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["demo_job", "make_images"]


def make_images(
    folder: str | os.PathLike[str], *, count: int = 24, size: int = 64, seed: int = 0
) -> Path:
    """Write ``count`` random RGB PNG images into ``folder/cat`` and ``folder/dog``.

    The layout is torchvision's ``ImageFolder``: one subfolder per class.
    """
    from PIL import Image

    root = Path(folder)
    generator = torch.Generator().manual_seed(seed)
    for i in range(count):
        label = ("cat", "dog")[i % 2]
        (root / label).mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (size, size, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(root / label / f"{i:04d}.png")
    return root


def demo_job(folder: str | os.PathLike[str], *, progress: bool = True):
    """Tap resnet18's ``layer4`` (average-pooled) and ``fc`` over 24 generated images.

    Writes the images to ``folder/images`` and the store to ``folder/features``, then reads
    the store back. Needs no network: the model has random weights.

    Returns:
        The job's ``JobResult``.
    """
    import torchvision
    from torchvision.transforms import v2

    from fxtap.dataset._job import extract_dataset

    root = Path(folder)
    images = make_images(root / "images")
    transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    dataset = torchvision.datasets.ImageFolder(str(images), transform=transform)
    model = torchvision.models.resnet18(weights=None)
    return extract_dataset(
        model,
        dataset,
        root / "features",
        return_nodes=["layer4", "fc"],
        pool="avg",
        batch_size=8,
        model_spec="torchvision:resnet18",
        progress=progress,
        resume=False,
    )
