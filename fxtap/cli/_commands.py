"""The subcommands of ``fxtap``: each reads its parsed arguments and runs one stage."""

from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

import fxtap.cli._run as _run
from fxtap._shapes import without_proxies
from fxtap.cli._models import load_spec
from fxtap.cli._output import (
    PROG,
    check_regular,
    check_writable,
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
from fxtap.extractor import FeatureExtractor
from fxtap.trace import NAME_KEY, Traced

__all__ = ["COMMANDS"]


def _nodes(args: argparse.Namespace) -> int:
    from fxtap.names import node_table

    model = _load(args)
    example = _inputs(args) if args.input else None
    training = args.mode == "train"
    traced = _extractor_trace(model, training) if isinstance(model, FeatureExtractor) else None
    with progress(f"tracing {args.model}"), quiet_stderr(), _fitting(args, model, example):
        rows = node_table(
            model, training=training, example_inputs=example, traced=traced, tracer=args.tracer
        )
    text = format_table(rows, shapes=example is not None)
    if args.json:
        write_text(args.json, json.dumps([row_dict(r) for r in rows], indent=1) + "\n")
    print(text)
    return 0


def _extract(args: argparse.Namespace) -> int:
    from fxtap.save import save

    model = _load(args)
    nodes = _nodes_arg(args)
    example = _inputs(args)
    output = Path(args.output)
    check_writable(output.parent if str(output.parent) else Path("."), output)
    checked = example if args.check_trace or args.tracer == "export" else None
    with progress(f"building the extractor of {args.model}"), _fitting(args, model, checked):
        extractor = _build(model, nodes, checked, example, args.tracer)
    with (
        progress("checking it on the example input"),
        torch.no_grad(),
        _fitting(args, model, example),
    ):
        was = extractor.training
        values = extractor.eval()(*example)
        extractor.train(was)
    with progress(f"saving {output}"):
        save(extractor, output, fmt=args.format)
    print(describe_extractor(extractor, values))
    print(f"saved {output} ({file_size(output)}, format {args.format})")
    return 0


def _render(args: argparse.Namespace) -> int:
    from fxtap.render import render

    model = _load(args)
    example = _inputs(args) if args.input else None
    if args.nodes:
        # An extractor resolves partial names ('layer4') and draws what it prunes dashed.
        with progress(f"building the extractor of {args.model}"):
            exported = example if args.tracer == "export" else None
            model = _build(
                model, _nodes_arg(args), exported, example, args.tracer, keep_traces=True
            )
    folder = Path(args.out_dir)
    drawn = {args.format, "dot", "svg"} if args.mode == "both" else {args.format, "dot"}
    for path in folder.glob(f"{glob.escape(args.name) if args.name else '*'}.*.*"):
        if path.suffix[1:] in drawn and path.stem.rpartition(".")[2] in ("train", "eval", "both"):
            check_regular(path)
    before = _snapshot(folder)
    with (
        progress(f"drawing {args.model}"),
        quiet_stderr(),
        _fitting(args, model, example),
        _whole_sets(folder, before, drawn),
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
    example = _inputs(args)
    for path in (args.json, args.csv, args.plot):
        if path:
            check_writable(Path(path).parent if str(Path(path).parent) else Path("."), Path(path))
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
    model: nn.Module,
    nodes: dict[str, str],
    checked: tuple[torch.Tensor, ...] | None,
    example: tuple[torch.Tensor, ...] | None,
    tracer: str,
    *,
    keep_traces: bool = False,
) -> Any:
    """The extractor; with ``--tracer auto``, torch.export on ``--input`` when the root fails.

    ``checked`` are the inputs create_feature_extractor gets (``--check-trace``, or the export
    path's); without them ``auto`` first takes torch.fx, as it does in Python.
    """
    from fxtap.extractor import create_feature_extractor

    build = functools.partial(create_feature_extractor, model, nodes, keep_traces=keep_traces)
    if tracer != "auto" or checked is not None or example is None:
        return build(example_inputs=checked, tracer=tracer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        extractor = build(tracer="fx")
    if not isinstance(extractor, FeatureExtractor):
        # NOTE: torch.fx cannot trace the root; the capture path's warning only if export fails
        with contextlib.suppress(FxtapError):
            extractor, caught = build(tracer="export", example_inputs=example), []
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return extractor


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Name -> (mtime, size) of the regular files in ``folder``."""
    if not folder.is_dir():
        return {}
    return {
        p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir() if p.is_file()
    }


@contextlib.contextmanager
def _whole_sets(
    folder: Path, before: dict[str, tuple[int, int]], suffixes: set[str]
) -> Iterator[None]:
    """On Ctrl-C, remove the drawings this run wrote, so no ``.dot`` lacks its drawing."""
    try:
        yield
    except KeyboardInterrupt:
        for name, stamp in _snapshot(folder).items():
            if name.rpartition(".")[2] in suffixes and before.get(name) != stamp:
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
    try:
        yield
    except InputShapeError as exc:
        if example is None:
            raise
        core = str(exc).split(". Pass ", 1)[0]
        raise InputShapeError(f"{core}. {_input_fix(args, model, example)}") from exc
    except FxtapError:
        raise
    except _MODEL_FAILURES as exc:
        if example is None:
            raise
        given = ", ".join(_shape_text(t) for t in example)
        reason = without_proxies(" ".join(str(exc).split())).rstrip(".") or type(exc).__name__
        end = "" if reason.endswith(("!", "?")) else "."
        raise InputShapeError(
            f"--input {given} does not fit {args.model}: {type(exc).__name__}: {reason}{end} "
            f"{_input_fix(args, model, example)}"
        ) from exc


def _input_fix(
    args: argparse.Namespace, model: nn.Module, example: tuple[torch.Tensor, ...]
) -> str:
    from fxtap.cli._examples import suggest_input

    rejected = [tuple(t.shape) for t in example]
    shape = suggest_input(args.model, model, rejected)
    if shape is None:
        return "Pass --input with the shape this model expects (repeat --input for each input)"
    return f"Pass --input with the shape this model expects, e.g. --input {shape}"


def _shape_text(value: object) -> str:
    return "x".join(map(str, value.shape)) if isinstance(value, torch.Tensor) else "?"


def _extractor_trace(extractor: FeatureExtractor, training: bool) -> Traced:
    """A saved extractor's own graph of one mode, described as a trace (no re-tracing)."""
    extractor.train(training)
    graph = extractor.graph_for("train" if training else "eval")
    # NOTE: pickled extractors lose node.meta; torch.fx names stand in for fxtap's then.
    names = {n: n.meta.get(NAME_KEY, n.name) for n in graph.nodes if n.op != "output"}
    return Traced(extractor, names, training)


def _load(args: argparse.Namespace) -> nn.Module:
    with progress(f"building {args.model}"):
        return load_spec(
            args.model, args.model_arg, trust=args.trust, allow_download=args.allow_download
        )


def _inputs(args: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    from fxtap.cli._examples import make_inputs

    return make_inputs(args.input, dtype=args.dtype)


def _nodes_arg(args: argparse.Namespace) -> dict[str, str]:
    if not args.nodes:
        raise InvalidArgumentError(
            f"no nodes requested; pass --nodes NAME [NAME ...], e.g. --nodes layer4. "
            f"List names with: {PROG} nodes {args.model}"
        )
    out: dict[str, str] = {}
    for item in args.nodes:
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
}
