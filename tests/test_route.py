"""Tests of fxtap.trace._route: one order of tracers, one default, for every entry point."""

from __future__ import annotations

import ast
import inspect
import warnings
from pathlib import Path

import pytest
import torch

import fxtap
from fxtap import InvalidArgumentError, TraceError
from fxtap.cli import main
from fxtap.trace import TraceOptions, route
from support.models import DataDependent, ListRoot, Nested

IMAGES = ([torch.rand(3, 8, 8)],)
DATA_DEPENDENT = "tests/support/models.py:DataDependent"


def test_route_takes_fx_then_export_then_capture() -> None:
    assert route(Nested(), TraceOptions()).path == "fx"
    # the root forward loops over a list: torch.fx fails there, torch.export on inputs does not
    exported = route(ListRoot(), TraceOptions(example_inputs=IMAGES))
    assert exported.path == "export" and set(exported.traces) == {"train", "eval"}
    assert exported.names["eval"] == exported.traces["eval"].names
    captured = route(ListRoot(), TraceOptions())
    assert captured.path == "capture" and captured.traces == {}
    assert isinstance(captured.error, TraceError) and not captured.error.module_path


def test_route_takes_export_only_when_asked() -> None:
    # "fx" never tries torch.export, even with inputs: it goes to capture
    assert route(ListRoot(), TraceOptions("fx", example_inputs=IMAGES)).path == "capture"
    assert route(ListRoot(), TraceOptions("export", example_inputs=IMAGES)).path == "export"
    with pytest.raises(InvalidArgumentError, match="example_inputs"):
        route(Nested(), TraceOptions("export"))


def test_route_raises_where_capture_cannot_serve() -> None:
    with pytest.raises(TraceError, match="ListRoot"):
        route(ListRoot(), TraceOptions(auto_leaf=False))
    with pytest.raises(TraceError, match="ListRoot"):
        route(ListRoot(), TraceOptions(), capture=False)
    with pytest.raises(TraceError, match="ListRoot"):
        fxtap.trace(ListRoot(), training=False)


def test_export_failure_is_a_note_on_the_trace_error() -> None:
    # a list of images torch.export cannot flatten: a str is no input
    with pytest.raises(TraceError) as caught:
        route(ListRoot(), TraceOptions(example_inputs=("not an image",)), capture=False)
    assert any(n.startswith("torch.export could not") for n in caught.value.__notes__)


def test_options_are_checked_when_made() -> None:
    with pytest.raises(InvalidArgumentError, match="closest: 'export'"):
        TraceOptions("exprt")
    with pytest.raises(InvalidArgumentError, match="auto_leaf"):
        TraceOptions(auto_leaf="yes")  # type: ignore[arg-type]
    options = TraceOptions(tracer_kwargs={"leaf_modules": [torch.nn.Conv2d]})
    assert options.recording_source().tracer_kwargs["record_source"] is True
    assert "record_source" not in options.tracer_kwargs  # type: ignore[operator]
    assert TraceOptions(example_inputs=IMAGES, check=False).checked_inputs is None


ENTRY_POINTS = (
    "trace",
    "get_graph_node_names",
    "node_table",
    "create_feature_extractor",
    "render",
    "compare",
    "split",
    "edit",
)


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_entry_point_defaults_to_auto(name: str) -> None:
    parameters = inspect.signature(getattr(fxtap, name)).parameters
    assert parameters["tracer"].default == "auto"
    if name != "trace":  # trace alone keeps torch.fx's error unless asked (a one-mode graph)
        assert parameters["auto_leaf"].default is True


def test_nodes_and_extract_agree_on_a_data_dependent_submodule(capsys, tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["nodes", DATA_DEPENDENT]) == 0
    out = capsys.readouterr().out
    assert "gate" in out
    with pytest.warns(UserWarning, match="kept 1 part"):
        rows = {row.name: row for row in fxtap.node_table(DataDependent())}
    assert rows["gate"].opaque
    for command in (["nodes", DATA_DEPENDENT], ["render", DATA_DEPENDENT, "-o", str(tmp_path)]):
        assert main([*command, "--no-auto-leaf"]) == 1
        assert "torch.fx could not trace DataDependent" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["nodes", "extract", "render", "bench", "split"])
def test_every_tracing_command_takes_the_tracing_flags(command: str) -> None:
    from fxtap.cli._parser import build_parser

    argv = {
        "nodes": [],
        "extract": ["--nodes", "stage", "-o", "x.fxtap"],
        "render": [],
        "bench": ["--nodes", "stage"],
        "split": ["--at", "stage", "-o", "out"],
    }[command]
    args = build_parser().parse_args([command, "m.py:M", *argv, "--no-auto-leaf", "--tracer", "fx"])
    assert args.auto_leaf is False and args.tracer == "fx"


#: The tracers themselves. Only ``route`` calls them to trace a model; the fallback retries
#: inside them, and the capture path's islands trace submodules with them.
TRACERS = {"export_trace", "trace_with_fallback", "trace_with_options", "names_with_fallback"}
TRACER_HOMES = {"_route.py", "_fallback.py", "_tracer.py", "_islands.py"}


def test_the_tracer_is_chosen_in_one_place() -> None:
    package = Path(fxtap.__file__).parent
    offenders = {}
    for path in package.rglob("*.py"):
        if path.name in TRACER_HOMES:
            continue
        called = {
            getattr(node.func, "id", getattr(node.func, "attr", None))
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Call)
        }
        if called & TRACERS:
            offenders[str(path.relative_to(package))] = sorted(called & TRACERS)
    assert offenders == {}, f"trace through fxtap.trace.route, not the tracers: {offenders}"
