"""``fxtap run``: compute the taps of a whole dataset into a feature store (see docs/dataset.md)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def add_parser(subparsers: Any) -> None:
    """Add the ``run`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "run",
        help="compute the taps of a whole dataset into a resumable feature store",
        description="Run a feature extractor over a dataset and write a zarr v3 store: one "
        "array per tap, labels and sample ids. Run it again to resume; under torchrun each "
        "rank computes its own chunks.",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="torchvision:NAME, timm:NAME, package.module:factory or path/to/file.py:factory "
        "(default: none, required)",
    )
    p.add_argument(
        "--model-arg",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="keyword argument of the model factory; repeatable (default: none)",
    )
    p.add_argument(
        "--nodes",
        metavar="NAME[=KEY]",
        nargs="+",
        required=True,
        help="nodes to tap, optionally renamed (default: none, required)",
    )
    p.add_argument(
        "--data",
        metavar="SPEC",
        required=True,
        help="imagefolder:PATH, fakedata:N (N random images), package.module:factory or "
        "path/to/file.py:factory returning a Dataset or DataLoader (default: none, required)",
    )
    p.add_argument(
        "--out", metavar="DIR", required=True, help="store folder (default: none, required)"
    )
    p.add_argument("--batch-size", type=_count, default=64, help="samples per batch (default: 64)")
    p.add_argument(
        "--num-workers", type=_count0, default=2, help="DataLoader worker processes (default: 2)"
    )
    p.add_argument(
        "--pool",
        choices=("avg", "max", "cls", "token_avg"),
        default=None,
        help="reduce maps [N,C,...] (avg, max) or token sequences [N,T,D] (cls, token_avg) "
        "(default: none, full values)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default=None,
        help="stored dtype of floating taps (default: each tap's own)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="cpu or cuda:N (default: cuda:LOCAL_RANK if available, else cpu)",
    )
    p.add_argument(
        "--chunk-size",
        type=_count,
        default=None,
        help="samples per chunk, a multiple of --batch-size (default: at most 16 MiB per chunk)",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="erase the job in --out and start over instead of resuming it (default: off)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip unreadable samples with a warning instead of stopping (default: off)",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="hide the progress bar (default: off)"
    )
    group = p.add_argument_group(
        "transforms",
        "Used when the model has none of its own: torchvision models take their weights' "
        "preprocessing, timm models their data config. Any flag below replaces them.",
    )
    group.add_argument(
        "--resize", type=_count, default=None, help="resize the short side to this (default: 256)"
    )
    group.add_argument("--crop", type=_count, default=None, help="center crop size (default: 224)")
    group.add_argument(
        "--mean",
        type=_floats,
        default=None,
        help=f"normalisation mean per channel (default: {','.join(map(str, IMAGENET_MEAN))})",
    )
    group.add_argument(
        "--std",
        type=_floats,
        default=None,
        help=f"normalisation std per channel (default: {','.join(map(str, IMAGENET_STD))})",
    )
    p.set_defaults(handler="run")


def run(args: argparse.Namespace) -> int:
    """Handle ``fxtap run``: build the model, the data and the job; print what was stored."""
    from fxtap._extras import require_extra

    require_extra("dataset", purpose="fxtap run")
    from fxtap.cli._models import load_model, parse_model_args
    from fxtap.dataset import extract_dataset

    model = load_model(args.model, parse_model_args(args.model_arg))
    transform = transform_for(args, model)
    data = load_data(args.data, transform)
    nodes: dict[str, str] = {}
    for item in args.nodes:
        name, _, key = item.partition("=")
        nodes[name] = key or name
    result = extract_dataset(
        model,
        data,
        args.out,
        return_nodes=nodes,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        pool=args.pool,
        dtype=args.dtype,
        device=args.device,
        resume=not args.restart,
        progress=not args.no_progress,
        skip_bad=args.skip_bad,
        chunk_size=args.chunk_size,
        model_spec=args.model,
    )
    if result.rank == 0:
        from fxtap.dataset import open_features

        feats = open_features(args.out)
        for key in feats.arrays:
            tap = feats.metadata["taps"][key]
            shape = "x".join(map(str, feats[key].shape))
            print(f"{key}  <- {tap['node']}  {shape} {tap['dtype']}")
        extra = [name for name in ("labels", "ids") if getattr(feats, name) is not None]
        print(f"stored in {args.out}" + (f" with {' and '.join(extra)}" if extra else ""))
    return 0


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


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def _count0(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not numbers separated by commas") from None
