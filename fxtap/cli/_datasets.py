"""``fxtap run``'s data: the ``--data`` specs and the preprocessing flags, as a Dataset."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "load_data", "transform_for"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def transform_for(args: argparse.Namespace, model: Any) -> Any:
    """The preprocessing: the model's own (torchvision weights, timm data config) or the flags."""
    flags = (args.resize, args.crop, args.mean, args.std)
    source, _, name = args.model.partition(":")
    if all(f is None for f in flags):
        if source == "torchvision":
            import torchvision.models

            try:
                # Only the weights' metadata is read: nothing is downloaded.
                return torchvision.models.get_model_weights(name).DEFAULT.transforms()
            except (ValueError, KeyError, AttributeError):
                pass
        elif source == "timm":
            import timm.data

            config = timm.data.resolve_data_config({}, model=model)
            return timm.data.create_transform(**config)
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(args.resize or 256),
            transforms.CenterCrop(args.crop or 224),
            transforms.ToTensor(),
            transforms.Normalize(list(args.mean or IMAGENET_MEAN), list(args.std or IMAGENET_STD)),
        ]
    )


def load_data(spec: str, transform: Any) -> Any:
    from fxtap.errors import InvalidArgumentError  # here: the parser must not import torch

    """The ``Dataset`` or ``DataLoader`` a ``--data`` SPEC names."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise InvalidArgumentError(
            f"data spec {spec!r} has no 'KIND:VALUE' form; expected imagefolder:PATH, fakedata:N, "
            "package.module:factory or path/to/file.py:factory (--data)"
        )
    if kind == "imagefolder":
        import torchvision.datasets

        if not Path(rest).is_dir():
            raise InvalidArgumentError(
                f"data spec {spec!r}: folder {rest!r} does not exist (--data)"
            )
        return torchvision.datasets.ImageFolder(rest, transform=transform)
    if kind == "fakedata":
        import torchvision.datasets

        if not rest.isdigit() or int(rest) < 1:
            raise InvalidArgumentError(
                f"data spec {spec!r}: N must be a positive whole number (--data)"
            )
        return torchvision.datasets.FakeData(
            int(rest), image_size=(3, 256, 256), transform=transform
        )
    source, _, factory = spec.rpartition(":")
    if not factory.isidentifier():
        raise InvalidArgumentError(
            f"data spec {spec!r}: {factory!r} is not a Python identifier; expected "
            "package.module:factory or path/to/file.py:factory (--data)"
        )
    module = _module(source, spec)
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise InvalidArgumentError(
            f"data spec {spec!r}: {source!r} has no callable {factory!r} (--data)"
        )
    try:
        takes_transform = "transform" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_transform = False
    return fn(transform=transform) if takes_transform else fn()


def _module(source: str, spec: str) -> Any:
    from fxtap.errors import InvalidArgumentError

    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise InvalidArgumentError(
                f"data spec {spec!r}: file {source!r} does not exist (--data)"
            )
        loader = importlib.util.spec_from_file_location(f"_fxtap_data_{path.stem}", path)
        if loader is None or loader.loader is None:
            raise InvalidArgumentError(
                f"data spec {spec!r}: {source!r} is not a Python file (--data)"
            )
        module = importlib.util.module_from_spec(loader)
        sys.modules[loader.name] = module
        loader.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(source)
    except ImportError as exc:
        raise InvalidArgumentError(
            f"data spec {spec!r}: cannot import {source!r} ({exc}) (--data)"
        ) from exc
