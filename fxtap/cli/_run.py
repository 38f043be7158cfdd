"""``fxtap run``: compute the taps of a whole dataset into a feature store (see docs/dataset.md)."""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "add_verify_parser", "resume_command", "run", "verify"]

from fxtap.cli._datasets import IMAGENET_MEAN, IMAGENET_STD


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
        help="torchvision:NAME, timm:NAME, package.module:factory, path/to/file.py:factory, "
        "or a saved extractor file such as resnet18.fxtap (default: none, required)",
    )
    p.add_argument(
        "--seed",
        type=_count0,
        default=0,
        help="torch.manual_seed before the model is built, so a random-weight model is the "
        "same on every run and the job resumes (default: 0)",
    )
    p.add_argument(
        "--trust",
        action="store_true",
        help="allow loading a pickled extractor file, which runs code stored in it (default: off)",
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
        default=None,
        help="nodes to tap, optionally renamed (default: none; required unless MODEL is a saved "
        "extractor, which has its taps)",
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
        "--num-workers",
        type=_count0,
        default=None,
        help="DataLoader worker processes (default: 2, or the CPU count if lower)",
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
        help="samples per chunk, a multiple of --batch-size (default: about 1/64 of the samples "
        "in whole batches, at most 16 MiB per chunk)",
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="run the model and 4-D inputs in the channels-last memory format, often faster "
        "on CPU; values differ from eager within float rounding (default: off)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="run the extractor through torch.compile; faster after seconds to minutes of "
        "compiling (default: off)",
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
        type=_positive_floats,
        default=None,
        help=f"normalisation std per channel (default: {','.join(map(str, IMAGENET_STD))})",
    )
    p.set_defaults(handler="run")


def add_verify_parser(subparsers: Any) -> None:
    """Add the ``verify`` subcommand: check every chunk of a feature store against its checksum."""
    p = subparsers.add_parser(
        "verify",
        help="check every chunk of a feature store against its checksum",
        description="Read every chunk file of a store written by 'fxtap run' and compare it "
        "with the SHA-256 recorded when it was written. Exit 1 naming the damaged chunks.",
    )
    p.add_argument("out", metavar="DIR", help="the store folder (default: none, required)")
    p.add_argument(
        "--partial",
        action="store_true",
        help="also check an unfinished job's finished chunks (default: off)",
    )
    p.set_defaults(handler="verify")


def verify(args: argparse.Namespace) -> int:
    """Handle ``fxtap verify DIR``."""
    from fxtap.dataset import open_features

    feats = open_features(args.out, partial=args.partial, verify=True)
    chunks = feats.metadata["job"]["chunk_size"]
    count = -(-len(feats) // chunks)
    state = "complete" if feats.metadata.get("complete") else "unfinished"
    print(f"{args.out}: {state} store of {len(feats):,} samples, {count} chunk(s) verified")
    return 0


def run(args: argparse.Namespace) -> int:
    """Handle ``fxtap run``: check, build the model, the data and the job; print what was stored.

    Everything that can be checked without the model is checked first, in CLI words.
    """
    import torch

    from fxtap._extras import require_extra
    from fxtap.cli._datasets import load_data, transform_for
    from fxtap.cli._models import load_spec
    from fxtap.errors import InvalidArgumentError

    require_extra("dataset", purpose="fxtap run")
    from fxtap.dataset._options import check_cpu_workers, check_out_outside_data, parse_device

    parse_device(args.device)
    if args.num_workers is not None:
        check_cpu_workers(args.num_workers)
    kind, _, rest = args.data.partition(":")
    if kind == "imagefolder" and rest:
        check_out_outside_data(args.out, rest)
    from fxtap.dataset import JobInterrupted, extract_dataset
    from fxtap.dataset._job import JobResult

    torch.manual_seed(args.seed)
    model = load_spec(args.model, args.model_arg, trust=args.trust)
    saved = _is_saved(args.model)
    if saved and args.nodes:
        raise InvalidArgumentError(
            f"{args.model!r} is a saved extractor, which has its taps; drop --nodes, or pass "
            "the model spec with --nodes"
        )
    if not saved and not args.nodes:
        raise InvalidArgumentError(
            f"--nodes is required with a model spec ({args.model!r}); name the nodes to tap, "
            "e.g. --nodes layer4 (list them with: fxtap nodes MODEL)"
        )
    transform = transform_for(args, model)
    data = load_data(args.data, transform)
    nodes: dict[str, str] | None = None
    if args.nodes:
        nodes = {}
        for item in args.nodes:
            name, _, key = item.partition("=")
            nodes[name] = key or name
    spec = " ".join([args.model, *(f"--model-arg {a}" for a in args.model_arg)])
    try:
        result: JobResult = extract_dataset(
            model,
            data,
            args.out,
            return_nodes=nodes,
            batch_size=args.batch_size,
            num_workers=_workers(args.num_workers),
            pool=args.pool,
            dtype=args.dtype,
            device=args.device,
            resume=not args.restart,
            progress=not args.no_progress,
            skip_bad=args.skip_bad,
            chunk_size=args.chunk_size,
            model_spec=spec,
            seed=args.seed,
            channels_last=args.channels_last,
            compile=args.compile,
        )
    except JobInterrupted as exc:
        text = str(exc).split("; run the same")[0]
        print(f"fxtap: interrupted: {text}; resume with: {resume_command(args)}", file=sys.stderr)
        return 128 + exc.signum if exc.signum != signal.SIGINT else 130
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


def resume_command(args: argparse.Namespace) -> str:
    """The command that resumes this job: the same arguments, without ``--restart``.

    Under torchrun, the ``-m fxtap run ...`` part of the same launch.
    """
    words = ["fxtap", "run", args.model]
    for item in args.model_arg:
        words += ["--model-arg", item]
    if args.nodes:
        words += ["--nodes", *args.nodes]
    words += ["--data", args.data, "--out", args.out, "--seed", str(args.seed)]
    for flag in (
        "batch_size",
        "num_workers",
        "pool",
        "dtype",
        "device",
        "chunk_size",
        "resize",
        "crop",
    ):
        value = getattr(args, flag)
        if value is not None:
            words += ["--" + flag.replace("_", "-"), str(value)]
    for flag in ("mean", "std"):
        if getattr(args, flag) is not None:
            words += ["--" + flag, ",".join(map(str, getattr(args, flag)))]
    for flag in ("trust", "skip_bad", "no_progress", "channels_last", "compile"):
        if getattr(args, flag):
            words.append("--" + flag.replace("_", "-"))
    command = shlex.join(words)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"the same torchrun launch with -m {command.removeprefix('fxtap ')}"
    return command


def _is_saved(spec: str) -> bool:
    path = Path(spec)
    return path.suffix in (".fxtap", ".pt", ".pth") or (path.is_file() and path.suffix != ".py")


def _workers(given: int | None) -> int:
    if given is not None:
        return given
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(2, cpus or 1)


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
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not numbers separated by commas") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} holds a value that is not finite")
    return values


def _positive_floats(text: str) -> tuple[float, ...]:
    values = _floats(text)
    if not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"{text!r}: every standard deviation must be > 0 (normalising divides by it)"
        )
    return values
