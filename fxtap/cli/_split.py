"""``fxtap split``: cut a model into a head and a tail, check them on an input, save both; and
the example input of a saved tail for ``nodes``, ``render`` and ``bench`` (its head's output).

Its arguments are declared in ``fxtap.cli._parser``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["load_head", "split_command", "tail_example"]


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


def load_head(args: argparse.Namespace, model: nn.Module, *, runs: bool) -> nn.Module | None:
    """The head saved with ``model`` when it is the tail of a split (``--head FILE``, else
    ``head.fxtap`` beside it) and ``runs`` (the command runs the tail); else ``None``.

    Raises:
        InvalidArgumentError: ``--head`` for a model that is no tail, or no head to be found.
    """
    from fxtap.cli._models import load_spec
    from fxtap.errors import InvalidArgumentError
    from fxtap.split import tail_keys

    if tail_keys(model) is None:
        if args.head is not None:
            raise InvalidArgumentError(
                f"--head {args.head} is for the tail of a split, and {args.model} is no tail "
                "(its input is not the boundary dict of 'fxtap split'); leave out --head"
            )
        return None
    if not runs:
        return None
    path = Path(args.head) if args.head is not None else Path(args.model).with_name("head.fxtap")
    if not path.is_file():
        raise InvalidArgumentError(
            f"{args.model} is the tail of a split: its input is the boundary dict its head "
            f"returns, and there is no head at {str(path)!r} to compute it from --input. Pass "
            "--head FILE, the head.fxtap 'fxtap split' saved with this tail"
        )
    head = load_spec(str(path), trust=args.trust)
    if tail_keys(head) is not None:
        raise InvalidArgumentError(
            f"--head {path} is a tail too (its input is a boundary dict); pass the head.fxtap "
            "'fxtap split' saved with the tail"
        )
    return head


def tail_example(
    args: argparse.Namespace, head: nn.Module, tail: nn.Module, example: tuple[Any, ...]
) -> tuple[Any, ...]:
    """The tail's example input: ``(head(*example),)``, run without autograd in eval mode.

    Raises:
        InvalidArgumentError: the head's boundary lacks a key the tail reads (another split's).
    """
    import torch

    from fxtap.errors import InvalidArgumentError, format_choices
    from fxtap.split import tail_keys

    was = head.training
    try:
        with torch.no_grad():
            boundary = head.eval()(*example)
    finally:
        head.train(was)
    needed = tail_keys(tail) or ()
    missing = [k for k in needed if not isinstance(boundary, dict) or k not in boundary]
    if missing:
        raise InvalidArgumentError(
            f"the head {args.head or Path(args.model).with_name('head.fxtap')} returns no "
            f"{format_choices(missing)}, which the tail {args.model} reads: they come from "
            "different splits. Pass --head FILE, the head.fxtap saved with this tail"
        )
    return (boundary,)
