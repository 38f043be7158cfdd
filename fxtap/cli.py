"""The ``fxtap`` command line: one subcommand per stage (nodes, extract, render, bench, demo)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from fxtap.errors import FxtapError, InvalidArgumentError, OutputPathError
from fxtap.extractor import FeatureExtractor
from fxtap.models import DEFAULT_INPUT, InputSpec, parse_dtype, parse_input
from fxtap.trace import NAME_KEY, Traced

__all__ = ["build_parser", "main", "progress", "quiet_stderr"]

PROG = "fxtap"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns 0 on success, 1 on a runtime error, 2 on bad usage.

    >>> main(["nodes", "torchvision:resnet18"])  # doctest: +SKIP
    0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # argparse exits 2 on bad usage and 0 on --help
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():
            # Filters stay as they are; only how a shown warning looks changes.
            warnings.showwarning = _show_warning
            return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1


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
    model = argparse.ArgumentParser(add_help=False, parents=[common])
    model.add_argument(
        "model",
        metavar="MODEL",
        help="torchvision:NAME, timm:NAME, package.module:factory, path/to/file.py:factory, "
        "or a saved extractor file (default: none, required)",
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
        "--trust",
        action="store_true",
        help="allow loading a pickled extractor file, which runs code stored in it (default: off)",
    )
    inputs = argparse.ArgumentParser(add_help=False)
    inputs.add_argument(
        "--input",
        metavar="SHAPE[:DTYPE]",
        action="append",
        type=_input_type,
        help=f"example input shape such as {DEFAULT_INPUT} or {DEFAULT_INPUT}:float16; "
        f"repeat for models with several inputs (default: {DEFAULT_INPUT})",
    )
    inputs.add_argument(
        "--dtype",
        type=_dtype_type,
        default=None,
        help="dtype of inputs whose --input names none (default: float32)",
    )
    taps = _nodes_parser(required=True)

    p = sub.add_parser(
        "nodes",
        parents=[model, inputs],
        help="print the node table of a model",
        description="Print every node of a model's traced graph: name, op, target, module type, "
        "parameters, and output shape and dtype when --input is given.",
    )
    p.add_argument(
        "--mode", choices=("train", "eval"), default="eval", help="graph to list (default: eval)"
    )
    p.add_argument("--json", metavar="FILE", help="also write the table as JSON (default: none)")
    p.set_defaults(handler=_nodes)

    p = sub.add_parser(
        "extract",
        parents=[model, inputs, taps],
        help="build a feature extractor and save it",
        description="Build a feature extractor (both train and eval graphs), check it on the "
        "example input in eval mode, and save it.",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        required=True,
        help="file to write (default: none, required)",
    )
    p.add_argument(
        "--format",
        choices=("fxtap", "pickle"),
        default="fxtap",
        help="'fxtap' loads without running code from the file; 'pickle' needs --trust to load "
        "(default: fxtap)",
    )
    p.add_argument(
        "--check-trace",
        action="store_true",
        help="compare each traced module with eager execution on the example input and make "
        "mis-traced ones opaque (default: off)",
    )
    p.set_defaults(handler=_extract)

    p = sub.add_parser(
        "render",
        parents=[model, inputs, _nodes_parser(required=False)],
        help="draw a model's graph, or the kept and pruned nodes of an extractor",
        description="Draw the traced graph with Graphviz; with --nodes, nodes the taps do not "
        "need are drawn dashed.",
    )
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
        default=800,
        help="collapse modules to draw about this many nodes (default: 800)",
    )
    p.set_defaults(handler=_render)

    p = sub.add_parser(
        "bench",
        parents=[model, inputs, taps],
        help="compare the cost of the full model, forward hooks and the extractor",
        description="Measure FLOPs, parameters, peak memory and latency of the full model, the "
        "model with forward hooks, and the fxtap extractor.",
    )
    p.add_argument("--device", default="cpu", help="device to run on (default: cpu)")
    p.add_argument(
        "--threads", type=_count_type, default=None, help="intra-op threads (default: torch's)"
    )
    p.add_argument(
        "--rounds", type=_count_type, default=10, help="interleaved timing rounds (default: 10)"
    )
    p.add_argument(
        "--min-run-time",
        type=float,
        default=0.2,
        help="seconds each variant is timed per round (default: 0.2)",
    )
    p.add_argument(
        "--mode", choices=("train", "eval"), default="eval", help="graph to measure (default: eval)"
    )
    p.add_argument("--json", metavar="FILE", help="write the report as JSON (default: none)")
    p.add_argument("--csv", metavar="FILE", help="write per-node costs as CSV (default: none)")
    p.add_argument("--plot", metavar="FILE", help="write a chart, needs matplotlib (default: none)")
    p.set_defaults(handler=_bench)

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
    p.set_defaults(handler=_demo)
    return parser


def _nodes_parser(*, required: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--nodes",
        metavar="NAME[=KEY]",
        nargs="+",
        required=required,
        help="node names to tap: 'layer4', 'layer4.1.conv2:input', ':output'; NAME=KEY names "
        "the output " + ("(default: none, required)" if required else "(default: none)"),
    )
    return parser


class progress:
    """Context manager printing ``fxtap: LABEL ...`` on stderr if the work takes over ``after`` s.

    Quick steps print nothing; slow ones say what they are doing and, at the end, how long
    they took.
    """

    def __init__(self, label: str, *, after: float = 2.0, stream: TextIO | None = None) -> None:
        self.label = label
        self.after = after
        self.stream = stream
        self.shown = False
        self.start = 0.0
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> progress:
        self.start = time.perf_counter()
        # The stream is fixed now, so that quiet_stderr() inside the block does not hide it.
        self.stream = self.stream if self.stream is not None else sys.stderr
        if self.after <= 0:
            self._show()
        else:
            self._timer = threading.Timer(self.after, self._show)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            if self.shown:
                elapsed = time.perf_counter() - self.start
                self._out().write(f"{PROG}: {self.label}: done in {elapsed:.1f} s\n")
                self._out().flush()
            self.shown = True  # a late timer must not print after the end

    def _show(self) -> None:
        with self._lock:
            if not self.shown:
                self.shown = True
                self._out().write(f"{PROG}: {self.label} ...\n")
                self._out().flush()

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Hide what libraries print on stderr inside the block (torch.fx's ShapeProp prints a
    traceback for every failed node before fxtap turns the failure into one clear error)."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


# --- handlers --------------------------------------------------------------------------------


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
        _write_text(args.json, json.dumps([_row_dict(r) for r in rows], indent=1) + "\n")
    print(text)
    return 0


def _extract(args: argparse.Namespace) -> int:
    from fxtap.extractor import create_feature_extractor
    from fxtap.save import save

    model = _load(args)
    nodes = _nodes_arg(args)
    example = _inputs(args)
    output = Path(args.output)
    _check_writable(output.parent if str(output.parent) else Path("."), output)
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
    print(f"saved {output} ({_size(output)}, format {args.format})")
    return 0


def _render(args: argparse.Namespace) -> int:
    from fxtap.render import render

    model = _load(args)
    example = _inputs(args) if args.input else None
    if args.nodes:
        from fxtap.extractor import create_feature_extractor

        # An extractor resolves partial names ('layer4') and draws what it prunes dashed.
        with progress(f"building the extractor of {args.model}"):
            model = create_feature_extractor(model, _nodes_arg(args))
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
            _check_writable(Path(path).parent if str(Path(path).parent) else Path("."), Path(path))
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
    from fxtap.demo import run

    result = run(
        model_spec=args.model,
        out_dir=args.out_dir,
        nodes=args.nodes,
        input=str(args.input) if args.input else None,
        quick=args.quick,
    )
    print(result.summary())
    return 0


# --- shared helpers --------------------------------------------------------------------------


def format_table(rows: Sequence[Any], *, shapes: bool) -> str:
    """The node table as aligned text columns, one node a line."""
    header = ["name", "op", "target", "module", "params"]
    if shapes:
        header += ["shape", "dtype"]
    lines = [header]
    for r in rows:
        line = [r.name, r.op, r.target, r.module_type or "-", f"{r.num_params:,}"]
        if shapes:
            line += ["x".join(map(str, r.shape)) if r.shape is not None else "-", r.dtype or "-"]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {4}
    out = []
    for line in lines:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def describe_extractor(extractor: Any, values: dict[str, Any]) -> str:
    """One line per output: key, node, shape and dtype; then kept nodes and parameters."""
    mode = "train" if extractor.training else "eval"
    outputs = extractor.outputs[mode]
    lines = [f"{extractor._get_name()} extractor, {len(outputs)} output(s):"]
    width = max(len(k) for k in outputs)
    for key, node in outputs.items():
        value = values.get(key)
        detail = (
            f"{'x'.join(map(str, value.shape))} {str(value.dtype).removeprefix('torch.')}"
            if isinstance(value, torch.Tensor)
            else type(value).__name__
        )
        lines.append(f"  {key.ljust(width)}  <- {node}  {detail}")
    params = sum(p.numel() for p in extractor.parameters())
    kept = getattr(extractor, "kept", None)
    if kept:
        lines.append(
            f"kept {len(kept['train'])} train / {len(kept['eval'])} eval nodes, "
            f"{params:,} parameters"
        )
    else:  # a CaptureExtractor runs the whole model
        lines.append(f"runs the whole model ({params:,} parameters) and captures the taps")
    return "\n".join(lines)


def load_spec(spec: str, model_args: Sequence[str] = (), *, trust: bool = False) -> nn.Module:
    """A model from a spec, or a saved extractor when ``spec`` is an existing file."""
    from fxtap.models import load_model, parse_model_args

    path = Path(spec)
    if path.suffix in (".fxtap", ".pt", ".pth") or (path.is_file() and path.suffix != ".py"):
        from fxtap.save import load

        return load(path, trust=trust)
    return load_model(spec, parse_model_args(model_args))


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
    from fxtap.models import make_inputs

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


def _check_writable(folder: Path, target: Path) -> None:
    if target.is_dir():
        raise OutputPathError(f"cannot write {str(target)!r}: it is a folder; give a file name")
    if not folder.is_dir():
        raise OutputPathError(
            f"cannot write {str(target)!r}: folder {str(folder)!r} does not exist; create it first"
        )


def _write_text(path: str, text: str) -> None:
    target = Path(path)
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputPathError(
            f"cannot write {path!r}: {exc.strerror or exc}. Pick a path in a folder that exists"
        ) from exc


def _row_dict(row: Any) -> dict[str, Any]:
    data = dataclasses.asdict(row)
    if data.get("shape") is not None:
        data["shape"] = list(data["shape"])
    return data


def _size(path: Path) -> str:
    size = float(path.stat().st_size)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    return ""  # pragma: no cover


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if not isinstance(exc, FxtapError | OSError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        text += " (run with --debug for the traceback)"
    return text


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    print(f"{PROG}: warning: {_one_line_text(str(message))}", file=file or sys.stderr)


def _one_line_text(text: str) -> str:
    return " ".join(text.split())


def _input_type(text: str) -> InputSpec:
    return _usage(parse_input)(text)


def _dtype_type(text: str) -> torch.dtype:
    return _usage(parse_dtype)(text)


def _count_type(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def _usage(fn: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return fn(text)
        except InvalidArgumentError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _version() -> str:
    from fxtap import __version__

    return __version__
