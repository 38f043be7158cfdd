"""The argument parser of ``fxtap``: one subcommand per stage, every default in its help."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from fxtap._budget import budget_problem
from fxtap.cli._inputs import DEFAULT_INPUT, InputSpec, head_parser, parse_dtype, parse_input
from fxtap.cli._run import add_parser as add_run_parser
from fxtap.cli._run import add_verify_parser

__all__ = ["PROG", "build_parser"]

#: The program name in usage lines and messages.
PROG = "fxtap"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fxtap`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Tap intermediate values of PyTorch models with torch.fx.",
        epilog="Run 'fxtap SUBCOMMAND --help' for each subcommand's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks of errors (default: off)"
    )
    parser.set_defaults(command=None)
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks of errors (default: off)",
    )
    model = _model_parser(common)
    # NOTE: extract and bench need an input and default to one; nodes and render show shapes
    # only when given one.
    needs_input = _inputs_parser(f"{DEFAULT_INPUT}")
    shapes_input = _inputs_parser("none: no shapes are shown")
    taps = _nodes_parser(required=True)
    tracing = _tracer_parser()
    head = head_parser()

    p = sub.add_parser(
        "nodes",
        parents=[model, shapes_input, tracing, head],
        help="print the node table of a model",
        description="Print every node of a model's traced graph: name, op, target, module type, "
        "parameters, and output shape and dtype when --input is given.",
    )
    p.add_argument(
        "--mode", choices=("train", "eval"), default="eval", help="graph to list (default: eval)"
    )
    p.add_argument("--json", metavar="FILE", help="also write the table as JSON (default: none)")
    p.set_defaults(handler="nodes")

    p = sub.add_parser(
        "extract",
        parents=[model, needs_input, tracing],
        help="build a feature extractor and save it",
        description="Build a feature extractor (both train and eval graphs), check it on the "
        "example input in eval mode, and save it in eval mode, ready for inference (--train "
        "saves it in train mode; .train() and .eval() switch a loaded one).",
    )
    _add_taps_by_mode(p, required=True)
    p.add_argument(
        "--train",
        action="store_true",
        help="save the extractor in train mode: a plain call then updates BatchNorm running "
        "statistics and applies dropout (default: off, eval mode)",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        required=True,
        help="file to write (default: none, required)",
    )
    _add_save_format(p)
    p.add_argument(
        "--check-trace",
        action="store_true",
        help="compare each traced module with eager execution on the example input and make "
        "mis-traced ones opaque (default: off)",
    )
    p.set_defaults(handler="extract")

    p = sub.add_parser(
        "render",
        parents=[model, shapes_input, tracing, head],
        help="draw a model's graph, or the kept and pruned nodes of an extractor",
        description="Draw the traced graph with Graphviz; with --nodes, nodes the taps do not "
        "need are drawn dashed.",
    )
    _add_taps_by_mode(p, required=False)
    p.add_argument("-o", "--out-dir", default=".", help="folder to write to (default: .)")
    p.add_argument(
        "--mode",
        choices=("train", "eval", "both"),
        default="both",
        help="graph(s) to draw (default: both)",
    )
    p.add_argument(
        "--format",
        choices=("svg", "png", "pdf", "dot"),
        default="svg",
        help="file format; dot writes DOT text without Graphviz (default: svg)",
    )
    p.add_argument("--name", help="file stem and title (default: the model's class name)")
    p.add_argument(
        "--depth",
        type=_count_type,
        default=None,
        help="draw modules nested deeper than this as one box (default: all levels)",
    )
    p.add_argument(
        "--max-nodes",
        type=_count_type,
        default=150,
        help="collapse modules to draw about this many nodes (default: 150)",
    )
    p.add_argument(
        "--html",
        action="store_true",
        help="also write NAME.html, an interactive viewer with search (default: off)",
    )
    p.set_defaults(handler="render")

    p = sub.add_parser(
        "bench",
        parents=[model, needs_input, taps, tracing, head],
        help="compare the cost of the full model, forward hooks and the extractor",
        description="Measure FLOPs, parameters, peak memory and latency of the full model, the "
        "model with forward hooks, and the fxtap extractor.",
    )
    p.add_argument("--device", default="cpu", help="device to run on (default: cpu)")
    p.add_argument(
        "--threads", type=_count_type, default=None, help="intra-op threads (default: torch's)"
    )
    p.add_argument(
        "--rounds",
        type=_budget_type("rounds"),
        default=10,
        help="interleaved timing rounds, at most 1000 (default: 10)",
    )
    p.add_argument(
        "--min-run-time",
        type=_budget_type("min_run_time"),
        default=0.2,
        help="seconds each variant is timed per round, at most 60 (default: 0.2)",
    )
    p.add_argument(
        "--mode", choices=("train", "eval"), default="eval", help="graph to measure (default: eval)"
    )
    p.add_argument("--json", metavar="FILE", help="write the report as JSON (default: none)")
    p.add_argument("--csv", metavar="FILE", help="write per-node costs as CSV (default: none)")
    p.add_argument("--plot", metavar="FILE", help="write a chart, needs matplotlib (default: none)")
    p.set_defaults(handler="bench")

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="run the whole job on a built-in example and write the results",
        description="Node table, extractor, drawings and cost report of one model, written "
        "to one folder.",
    )
    p.add_argument("-o", "--out-dir", default="out", help="folder to write to (default: out)")
    p.add_argument(
        "--model",
        default="torchvision:resnet18",
        help="model spec (default: torchvision:resnet18)",
    )
    p.add_argument(
        "--nodes",
        metavar="NAME",
        nargs="+",
        default=["layer2", "layer4"],
        help="nodes to tap (default: layer2 layer4)",
    )
    p.add_argument(
        "--input",
        metavar="SHAPE[:DTYPE]",
        type=_input_type,
        default=None,
        help=f"example input (default: {DEFAULT_INPUT})",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="time fewer rounds, for a fast look (default: off)",
    )
    p.set_defaults(handler="demo")
    add_run_parser(sub)
    add_verify_parser(sub)
    _add_split_parser(sub, [model, needs_input, tracing])
    return parser


def _model_parser(common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parent parser of the subcommands taking a MODEL: how to build or load it."""
    model = argparse.ArgumentParser(add_help=False, parents=[common])
    what = "torchvision:NAME, timm:NAME, package.module:factory, path/to/file.py:factory,"
    model.add_argument(
        "model", metavar="MODEL", help=f"{what} or a saved extractor file (default: none, required)"
    )
    model.add_argument(
        "--model-arg",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="keyword argument of the model factory, a Python literal or a string; repeatable "
        "(default: none; torchvision gets weights=None, timm pretrained=False)",
    )
    model.add_argument(
        "--allow-download",
        action="store_true",
        help="let --model-arg weights=DEFAULT (timm: pretrained=True) download pretrained "
        "weights; without it such arguments are refused (default: off, nothing is downloaded)",
    )
    model.add_argument(
        "--trust",
        action="store_true",
        help="allow loading a pickled extractor file, which runs code stored in it (default: off)",
    )
    return model


def _add_split_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``split`` subcommand; ``parents`` give MODEL, --input and --tracer."""
    p = subparsers.add_parser(
        "split",
        parents=parents,
        help="cut a model into a head and a tail and save both",
        description="Cut a model after the given nodes into a head, which returns the boundary "
        "(every value the rest of the model needs), and a tail, which finishes the forward from "
        "it. Both are checked on the example input (tail(head(x)) against the model, eval mode) "
        "and saved as DIR/head.fxtap and DIR/tail.fxtap.",
    )
    p.add_argument(
        "--at",
        metavar="NAME",
        nargs="+",
        required=True,
        help="node names to cut after: 'layer3', 'layer3.1.conv1:input' (default: none, required)",
    )
    p.add_argument(
        "-o",
        "--output",
        dest="out_dir",
        metavar="DIR",
        required=True,
        help="folder to write (default: none, required)",
    )
    _add_save_format(p)
    p.set_defaults(handler="split")


def _inputs_parser(default: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--input",
        metavar="SHAPE[:DTYPE]",
        action="append",
        type=_input_type,
        help=f"example input shape such as {DEFAULT_INPUT} or {DEFAULT_INPUT}:float16; "
        f"repeat for models with several inputs (default: {default})",
    )
    parser.add_argument(
        "--dtype",
        type=_dtype_type,
        default=None,
        help="dtype of inputs whose --input names none (default: float32)",
    )
    return parser


def _tracer_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--tracer",
        choices=("auto", "fx", "export"),
        default="auto",
        help="fx traces with torch.fx; export with torch.export on the --input (ATen ops, "
        "for models torch.fx cannot trace, such as Hugging Face ones); auto uses torch.fx, "
        "and torch.export when torch.fx cannot trace the model's forward and an --input is "
        "given (default: auto)",
    )
    parser.add_argument(
        "--no-auto-leaf",
        dest="auto_leaf",
        action="store_false",
        help="fail with torch.fx's error where a submodule cannot be traced, instead of keeping "
        "it opaque with a warning (default: off, such submodules are kept opaque)",
    )
    return parser


def _nodes_parser(*, required: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    _add_nodes(parser, "(default: none, required)" if required else "(default: none)", required)
    return parser


def _add_taps_by_mode(p: argparse.ArgumentParser, *, required: bool) -> None:
    """``--nodes``, or ``--train-nodes`` with ``--eval-nodes`` (``extract`` and ``render``)."""
    taps_by_mode = p.add_mutually_exclusive_group(required=required)
    _add_nodes(taps_by_mode, "(default: none; this or --train-nodes with --eval-nodes)")
    for mode, other in (("train", "eval"), ("eval", "train")):
        (taps_by_mode if mode == "train" else p).add_argument(
            f"--{mode}-nodes",
            metavar="NAME[=KEY]",
            nargs="+",
            help=f"nodes to tap in {mode} mode only, for models whose graphs differ between "
            f"modes (GoogLeNet's aux1 exists in train mode only); needs --{other}-nodes, "
            "replaces --nodes (default: none)",
        )


def _add_nodes(parser: Any, default: str, required: bool = False) -> None:
    parser.add_argument(
        "--nodes",
        metavar="NAME[=KEY]",
        nargs="+",
        required=required,
        help="node names to tap: 'layer4', 'layer4.1.conv2:input', ':output'; NAME=KEY names "
        f"the output {default}",
    )


def _input_type(text: str) -> InputSpec:
    return _usage(parse_input)(text)


def _dtype_type(text: str) -> str:
    return _usage(parse_dtype)(text)


def _count_type(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def _budget_type(name: str) -> Callable[[str], float]:
    """A timing budget of ``fxtap bench``, refused before any work when out of its bounds."""

    def parse(text: str) -> float:
        try:
            value: float = int(text) if name != "min_run_time" else float(text)
        except ValueError:
            value = float("nan")
        problem = budget_problem(name, value)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
        return value

    return parse


def _usage(fn: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return fn(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _version() -> str:
    from fxtap._version import __version__

    return __version__


def _add_save_format(p: argparse.ArgumentParser) -> None:
    """``--format`` of the commands that save extractors (extract, split)."""
    p.add_argument(
        "--format",
        choices=("fxtap", "pickle"),
        default="fxtap",
        help="'fxtap' loads without running code from the file; 'pickle' needs --trust to load "
        "(default: fxtap)",
    )
