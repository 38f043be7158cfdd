"""The subcommands of ``fxtap``: each reads its parsed arguments and runs one stage."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import fxtap.cli._run as _run
from fxtap.cli._models import load_spec
from fxtap.cli._output import (
    PROG,
    check_writable,
    describe_extractor,
    file_size,
    format_table,
    progress,
    quiet_stderr,
    row_dict,
    write_text,
)
from fxtap.errors import InvalidArgumentError
from fxtap.extractor import FeatureExtractor
from fxtap.trace import NAME_KEY, Traced

__all__ = ["COMMANDS"]


def _nodes(args: argparse.Namespace) -> int:
    from fxtap.names import node_table

    model = _load(args)
    example = _inputs(args) if args.input else None
    training = args.mode == "train"
    traced = _extractor_trace(model, training) if isinstance(model, FeatureExtractor) else None
    with progress(f"tracing {args.model}"), quiet_stderr():
        rows = node_table(model, training=training, example_inputs=example, traced=traced)
    text = format_table(rows, shapes=example is not None)
    if args.json:
        write_text(args.json, json.dumps([row_dict(r) for r in rows], indent=1) + "\n")
    print(text)
    return 0


def _extract(args: argparse.Namespace) -> int:
    from fxtap.extractor import create_feature_extractor
    from fxtap.save import save

    model = _load(args)
    nodes = _nodes_arg(args)
    example = _inputs(args)
    output = Path(args.output)
    check_writable(output.parent if str(output.parent) else Path("."), output)
    checked = example if args.check_trace else None
    with progress(f"building the extractor of {args.model}"):
        extractor = create_feature_extractor(model, nodes, example_inputs=checked)
    with progress("checking it on the example input"), torch.no_grad():
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
        from fxtap.extractor import create_feature_extractor

        # An extractor resolves partial names ('layer4') and draws what it prunes dashed.
        with progress(f"building the extractor of {args.model}"):
            model = create_feature_extractor(model, _nodes_arg(args), keep_traces=True)
    with progress(f"drawing {args.model}"), quiet_stderr():
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
        )
    for message in getattr(result, "messages", ()):
        print(f"note: {message}", file=sys.stderr)
    for path in result.paths:
        print(f"wrote {path}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from fxtap.cost import compare

    model = _load(args)
    nodes = _nodes_arg(args)
    example = _inputs(args)
    for path in (args.json, args.csv, args.plot):
        if path:
            check_writable(Path(path).parent if str(Path(path).parent) else Path("."), Path(path))
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


def _extractor_trace(extractor: FeatureExtractor, training: bool) -> Traced:
    """A saved extractor's own graph of one mode, described as a trace (no re-tracing)."""
    extractor.train(training)
    graph = extractor.graph_for("train" if training else "eval")
    # NOTE: pickled extractors lose node.meta; torch.fx names stand in for fxtap's then.
    names = {n: n.meta.get(NAME_KEY, n.name) for n in graph.nodes if n.op != "output"}
    return Traced(extractor, names, training)


def _load(args: argparse.Namespace) -> nn.Module:
    with progress(f"building {args.model}"):
        return load_spec(args.model, args.model_arg, trust=args.trust)


def _inputs(args: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    from fxtap.cli._models import make_inputs

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
}
