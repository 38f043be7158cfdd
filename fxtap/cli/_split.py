"""``fxtap split``: cut a model into a head and a tail, check them on an input, save both.

Its arguments are declared in ``fxtap.cli._parser``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["split_command"]


def split_command(args: argparse.Namespace) -> int:
    import torch

    from fxtap._io import check_output
    from fxtap.cli._examples import make_inputs
    from fxtap.cli._models import load_spec
    from fxtap.cli._output import file_size, progress
    from fxtap.errors import ensure_output_dir
    from fxtap.save import save
    from fxtap.split import split_with
    from fxtap.trace import TraceOptions

    paths = {half: Path(args.out_dir) / f"{half}.fxtap" for half in ("head", "tail")}
    if Path(args.out_dir).is_dir():  # before any work, as for every output path
        for path in paths.values():
            check_output(path, hint="Pass another folder with -o DIR.")
    with progress(f"building {args.model}"):
        model = load_spec(
            args.model, args.model_arg, trust=args.trust, allow_download=args.allow_download
        )
    example = make_inputs(args.input, dtype=args.dtype)
    with progress(f"cutting {args.model} at {', '.join(args.at)}"):
        options = TraceOptions(
            tracer=args.tracer, auto_leaf=args.auto_leaf, example_inputs=example, check=False
        )
        halves = split_with(model, args.at, options)
    with progress("checking tail(head(x)) against the model"), torch.no_grad():
        head, tail = halves
        was = (model.training, head.training)
        model.eval()
        head.eval()
        tail.eval()
        boundary = head(*example)
        same = _same(tail(boundary), model(*example))
        model.train(was[0])
        head.train(was[1])
        tail.train(was[1])
    folder = ensure_output_dir(args.out_dir, hint="Pass a writable folder with -o DIR.")
    with progress(f"saving {folder}"):
        for half, module in zip(("head", "tail"), halves, strict=True):
            save(module, paths[half], fmt=args.format)
    total = sum(p.numel() for p in model.parameters())
    print(f"boundary of {args.model} cut at {', '.join(halves.at['eval'])}:")
    width = max(len(k) for k in boundary)
    for key, value in boundary.items():
        detail = (
            f"{'x'.join(map(str, value.shape))} {str(value.dtype).removeprefix('torch.')}"
            if isinstance(value, torch.Tensor)
            else f"{type(value).__name__} {value!r:.40}"
        )
        print(f"  {key.ljust(width)}  {detail}")
    for half, module in zip(("head", "tail"), halves, strict=True):
        params = sum(p.numel() for p in module.parameters())
        print(
            f"{half}: {len(module.kept['eval'])} eval nodes, {params:,} of {total:,} parameters; "
            f"saved {paths[half]} ({file_size(paths[half])}, format {args.format})"
        )
    print(
        "tail(head(x)) equals the model's output bitwise (eval mode)"
        if same
        else "tail(head(x)) differs from the model's output (eval mode): an op reads state the "
        "cut reorders; compare with fxtap.split in Python"
    )
    return 0 if same else 1


def _same(a: Any, b: Any) -> bool:
    """``a`` and ``b`` are outputs of the same type whose leaves are equal (tensors bitwise)."""
    import torch

    from fxtap._compat import tree_leaves

    leaves_a, leaves_b = tree_leaves(a), tree_leaves(b)
    return (
        type(a) is type(b)
        and len(leaves_a) == len(leaves_b)
        and all(
            torch.equal(x, y) if isinstance(x, torch.Tensor) else bool(x == y)
            for x, y in zip(leaves_a, leaves_b, strict=True)
        )
    )
