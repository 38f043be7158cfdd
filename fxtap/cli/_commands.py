"""The subcommands of ``fxtap``: each reads its parsed arguments and runs one stage."""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import re
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

import fxtap.cli._run as _run
import fxtap.cli._split as _split
from fxtap._io import check_output
from fxtap._protocol import is_extractor
from fxtap._shapes import without_proxies
from fxtap.cli._models import load_spec
from fxtap.cli._output import (
    PROG,
    cli_words,
    describe_extractor,
    file_size,
    format_table,
    progress,
    quiet_stderr,
    row_dict,
    write_text,
)
from fxtap.errors import FxtapError, InputShapeError, InvalidArgumentError

__all__ = ["COMMANDS"]


def _nodes(args: argparse.Namespace) -> int:
    from fxtap.names import node_table

    model = _load(args)
    example = _example(args, model, _inputs(args) if args.input else None)
    training = args.mode == "train"
    with progress(f"tracing {args.model}"), quiet_stderr(), _fitting(args, model, example):
        if is_extractor(model):
            rows = model.node_rows(training=training, example_inputs=example, tracer=args.tracer)
        else:
            rows = node_table(
                model,
                training=training,
                example_inputs=example,
                tracer=args.tracer,
                auto_leaf=args.auto_leaf,
            )
    text = format_table(rows, shapes=example is not None)
    if args.json:
        write_text(args.json, json.dumps([row_dict(r) for r in rows], indent=1) + "\n")
    print(text)
    return 0


def _extract(args: argparse.Namespace) -> int:
    from fxtap.save import save

    model = _load(args)
    nodes = _requests_arg(args)
    example = _inputs(args)
    output = Path(args.output)
    checked = example if args.check_trace or args.tracer == "export" else None
    with progress(f"building the extractor of {args.model}"), _fitting(args, model, checked):
        extractor = _build(args, model, nodes, example, check=args.check_trace)
    with (
        progress("checking it on the example input"),
        torch.no_grad(),
        _fitting(args, model, example),
    ):
        values = extractor.eval()(*example)
    # NOTE: saved for inference: eval mode unless --train (a model factory builds in train mode)
    extractor.train(args.train)
    with progress(f"saving {output}"):
        save(extractor, output, fmt=args.format)
    print(describe_extractor(extractor, values))
    mode = "train" if args.train else "eval"
    print(f"saved {output} ({file_size(output)}, format {args.format}, {mode} mode)")
    return 0


def _render(args: argparse.Namespace) -> int:
    from fxtap.render import render

    model = _load(args)
    example = _example(args, model, _inputs(args) if args.input else None)
    if args.nodes or args.train_nodes or args.eval_nodes:
        # An extractor resolves partial names ('layer4') and draws what it prunes dashed.
        with progress(f"building the extractor of {args.model}"):
            model = _build(args, model, _requests_arg(args), example, keep_traces=True)
    folder = Path(args.out_dir)
    drawn = {args.format, "dot", "svg"} if args.mode == "both" else {args.format, "dot"}
    for path in folder.glob(f"{glob.escape(args.name) if args.name else '*'}.*.*"):
        if path.suffix[1:] in drawn and path.stem.rpartition(".")[2] in ("train", "eval", "both"):
            check_output(path, hint="Pass another folder with -o DIR, or another --name.")
    before = _snapshot(folder)
    with (
        progress(f"drawing {args.model}"),
        quiet_stderr(),
        _fitting(args, model, example),
        _whole_sets(folder, before, drawn, args.name),
    ):
        result = render(
            model,
            mode=args.mode,
            example_inputs=example,
            out_dir=args.out_dir,
            name=args.name,
            fmt=args.format,
            depth=args.depth,
            max_nodes=args.max_nodes,
            html=args.html,
            tracer=args.tracer,
            auto_leaf=args.auto_leaf,
        )
    for message in getattr(result, "messages", ()):
        print(f"note: {cli_words(message)}", file=sys.stderr)
    for path in result.paths:
        print(f"wrote {path}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from fxtap._extras import require_extra
    from fxtap.cost import compare

    if args.plot:
        require_extra("plot", purpose="--plot")

    model = _load(args)
    nodes = _nodes_arg(args)
    example: tuple[Any, ...] = _example(args, model, _inputs(args)) or ()
    with _fitting(args, model, example):
        report = compare(
            model,
            nodes,
            example,
            device=args.device,
            threads=args.threads,
            rounds=args.rounds,
            min_run_time=args.min_run_time,
            training=args.mode == "train",
            progress=sys.stderr.isatty(),
            tracer=args.tracer,
            auto_leaf=args.auto_leaf,
        )
    print(report.table())
    for path, write in ((args.json, report.to_json), (args.csv, report.to_csv)):
        if path:
            write(path)
            print(f"wrote {path}")
    if args.plot:
        report.plot(args.plot)
        print(f"wrote {args.plot}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from fxtap.cli._demo import run

    result = run(
        model_spec=args.model,
        out_dir=args.out_dir,
        nodes=args.nodes,
        input=str(args.input) if args.input else None,
        quick=args.quick,
    )
    print(result.summary())
    return 0


def _build(
    args: argparse.Namespace,
    model: nn.Module,
    nodes: dict[str, Any],
    example: tuple[torch.Tensor, ...] | None,
    *,
    check: bool = False,
    keep_traces: bool = False,
) -> Any:
    """The extractor of ``nodes`` (``return_nodes``, or ``train_return_nodes`` with
    ``eval_return_nodes``), traced as ``--tracer`` and ``--no-auto-leaf`` say on ``--input``.

    ``--input`` is what torch.export traces with; it checks the torch.fx graph only with
    ``check`` (``--check-trace``).
    """
    from fxtap._query import requests_by_mode
    from fxtap.extractor import build_extractor
    from fxtap.trace import TraceOptions

    options = TraceOptions(
        tracer=args.tracer, auto_leaf=args.auto_leaf, example_inputs=example, check=check
    )
    requests = requests_by_mode(
        nodes.get("return_nodes"), nodes.get("train_return_nodes"), nodes.get("eval_return_nodes")
    )
    return build_extractor(model, requests, options, keep_traces=keep_traces)


def _snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Name -> (inode, mtime, size) of the regular files in ``folder`` (links not followed)."""
    if not folder.is_dir():
        return {}
    stamps = {}
    for path in folder.iterdir():
        info = path.lstat()
        if stat.S_ISREG(info.st_mode):
            stamps[path.name] = (info.st_ino, info.st_mtime_ns, info.st_size)
    return stamps


@contextlib.contextmanager
def _whole_sets(
    folder: Path, before: dict[str, tuple[int, int, int]], suffixes: set[str], stem: str | None
) -> Iterator[None]:
    """On Ctrl-C, remove the drawings this run wrote, so no ``.dot`` lacks its drawing.

    Only a drawing's name (``STEM.MODE.EXT``) that is new or was replaced since the run began
    (a new inode: fxtap's writer renames a new file over the old) is removed; a file written
    in place, a link, or any other name is someone else's and stays.
    """
    try:
        yield
    except KeyboardInterrupt:
        for name, stamp in _snapshot(folder).items():
            base, _, ext = name.rpartition(".")
            named, _, mode = base.rpartition(".")
            ours = ext in suffixes and mode in ("train", "eval", "both") and stem in (None, named)
            old = before.get(name)
            if ours and (old is None or old[0] != stamp[0]):
                (folder / name).unlink(missing_ok=True)
        raise


#: Errors a model raises itself when an input does not fit it (torch's shape checks, asserts).
_MODEL_FAILURES = (RuntimeError, AssertionError, IndexError, ValueError, TypeError)


@contextlib.contextmanager
def _fitting(
    args: argparse.Namespace, model: nn.Module, example: tuple[torch.Tensor, ...] | None
) -> Iterator[None]:
    """Turn a model's refusal of the example input into an error that names --input and a fix.

    The suggested shape fits this model (its weights' preprocessing or its first layer) and is
    never the input just rejected.
    """
    if example is not None and not all(isinstance(t, torch.Tensor) for t in example):
        example = None  # a tail's boundary: --input reached it through the head, which fit it
    try:
        yield
    except InputShapeError as exc:
        if example is None:
            raise
        # an extractor's call names its argument ('x'); the command line names --input
        core = re.sub(r"^input '[^']*' of shape ", "--input ", str(exc).split(". Pass ", 1)[0])
        raise InputShapeError(f"{core}. {_input_fix(args, model, example) or _ANY_SHAPE}") from exc
    except FxtapError:
        raise
    except _MODEL_FAILURES as exc:
        shaped = _input_fix(args, model, example) if example is not None else None
        if shaped is None or example is None:
            raise  # no other shape fits either: the failure is not --input's shape
        given = ", ".join(_shape_text(t) for t in example)
        reason = without_proxies(" ".join(str(exc).split())).rstrip(".") or type(exc).__name__
        end = "" if reason.endswith(("!", "?")) else "."
        raise InputShapeError(
            f"--input {given} does not fit {args.model}: {type(exc).__name__}: {reason}{end} {shaped}"
        ) from exc


_ANY_SHAPE = "Pass --input with the shape this model expects (repeat --input for each input)"


def _input_fix(
    args: argparse.Namespace, model: nn.Module, example: tuple[torch.Tensor, ...]
) -> str | None:
    """The fix naming a shape that fits; for one input, ``None`` when no other shape fits
    (the failure is then not the shape's: a branch, a value, the model's own error)."""
    from fxtap.cli._examples import suggest_input

    rejected = [tuple(t.shape) for t in example]
    shape = suggest_input(args.model, model, rejected)
    if shape is None:
        return None if len(example) == 1 else _ANY_SHAPE
    return f"Pass --input with the shape this model expects, e.g. --input {shape}"


def _example(
    args: argparse.Namespace, model: nn.Module, example: tuple[torch.Tensor, ...] | None
) -> tuple[Any, ...] | None:
    """What ``model`` runs on: ``example``, or for the tail of a split (``fxtap split``) the
    boundary its head returns on ``example``."""
    head = _split.load_head(args, model, runs=example is not None)
    if head is None or example is None:
        return example
    with progress("running the head on --input"), _fitting(args, head, example):
        return _split.tail_example(args, head, model, example)


def _shape_text(value: object) -> str:
    return "x".join(map(str, value.shape)) if isinstance(value, torch.Tensor) else "?"


def _load(args: argparse.Namespace) -> nn.Module:
    with progress(f"building {args.model}"):
        return load_spec(
            args.model, args.model_arg, trust=args.trust, allow_download=args.allow_download
        )


def _inputs(args: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    from fxtap.cli._examples import make_inputs

    return make_inputs(args.input, dtype=args.dtype)


def _requests_arg(args: argparse.Namespace) -> dict[str, Any]:
    """``--nodes``, or ``--train-nodes`` with ``--eval-nodes``, as create_feature_extractor's
    keyword arguments."""
    train, evals = args.train_nodes, args.eval_nodes
    if train is None and evals is None:
        return {"return_nodes": _nodes_arg(args)}
    if args.nodes:
        raise InvalidArgumentError(
            "--nodes was given together with --train-nodes/--eval-nodes; pass either --nodes "
            "(both modes) or both --train-nodes and --eval-nodes"
        )
    if train is None or evals is None:
        given, missing = (
            ("--train-nodes", "--eval-nodes")
            if evals is None
            else ("--eval-nodes", "--train-nodes")
        )
        raise InvalidArgumentError(
            f"only {given} was given; pass {missing} too (the nodes to tap in that mode), or "
            "--nodes for both modes"
        )
    return {"train_return_nodes": _keyed(train), "eval_return_nodes": _keyed(evals)}


def _nodes_arg(args: argparse.Namespace) -> dict[str, str]:
    if not args.nodes:
        raise InvalidArgumentError(
            f"no nodes requested; pass --nodes NAME [NAME ...], e.g. --nodes layer4. "
            f"List names with: {PROG} nodes {args.model}"
        )
    return _keyed(args.nodes)


def _keyed(items: list[str]) -> dict[str, str]:
    """``NAME[=KEY]`` items as node name -> output key."""
    out: dict[str, str] = {}
    for item in items:
        name, _, key = item.partition("=")
        out[name] = key or name
    return out


#: subcommand -> handler; the parser names handlers by subcommand.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "nodes": _nodes,
    "extract": _extract,
    "render": _render,
    "bench": _bench,
    "demo": _demo,
    "run": _run.run,
    "verify": _run.verify,
    "split": _split.split_command,
}
