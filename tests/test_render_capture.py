"""Tests of fxtap.render on capture extractors: module calls, islands, untraced calls, early exit."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import fxtap
from fxtap.capture import CaptureExtractor
from fxtap.errors import InvalidArgumentError
from support.models import ListPipeline

IMAGES = torch.rand(2, 3, 8, 8)  # iterated by the root: two images, body called twice
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot not installed")


def _capture(model: torch.nn.Module, nodes: Any) -> CaptureExtractor:
    with pytest.warns(UserWarning, match="cannot trace the root"):
        ex = fxtap.create_feature_extractor(model, nodes)
    assert isinstance(ex, CaptureExtractor)
    return ex.eval()


def _dot(ex: Any, tmp_path: Path, **kw: Any) -> str:
    r = fxtap.render(ex, mode="eval", example_inputs=IMAGES, fmt="dot", out_dir=tmp_path, **kw)
    return r.drawings[0].dot_path.read_text(encoding="utf-8")


def _node(dot: str, name: str) -> str:
    """The attribute text of node ``name`` in DOT text (fails when it is not drawn)."""
    found = re.search(rf'^\s*"{re.escape(name)}" \[(.*)\];$', dot, re.M)
    assert found, f"node {name!r} not drawn"
    return found.group(1)


def _edge(dot: str, a: str, b: str) -> str | None:
    found = re.search(rf'^\s*"{re.escape(a)}" -> "{re.escape(b)}"(.*);$', dot, re.M)
    return None if found is None else found.group(1)


def test_early_tap_draws_island_untraced_calls_and_the_part_not_run(tmp_path: Path) -> None:
    ex = _capture(ListPipeline(), ["body.conv1"])
    dot = _dot(ex, tmp_path)
    # the island is a framed cluster holding its traced graph, named by full paths
    island = re.search(r'subgraph "cluster_body" \{\n\s*(.*);', dot)
    assert island and 'color="#0072B2"' in island.group(1) and "traced island" in island.group(1)
    assert "called 2×" in island.group(1)
    for name in ("body.x", "body.conv1", "body.bn", "body.conv2", "body.output"):
        assert 'class="kept' in _node(dot, name) and "not run" not in _node(dot, name)
    # the tap is highlighted as on the pruned path
    tap = _node(dot, "body.conv1")
    assert 'penwidth="3"' in tap and "requested" in tap and "⇒ output" in tap
    # untraced calls are hatched boxes inside their module's cluster; after the tap: not run
    assert 'subgraph "cluster_head"' in dot and "forward not traced" in dot
    gate, fc = _node(dot, "head.gate"), _node(dot, "head.fc")
    assert "untraced: forward not traceable" in gate and "untraced: leaf module" in fc
    # what the first call of each returned: islands by shape propagation, calls by the probe
    assert "1×4×8×8 float32" in tap and "1×6×8×8 float32" in _node(dot, "body.conv2")
    assert "shape: 1×2 float32" in fc and "shape: 1×6 float32" in gate
    for attrs in (gate, fc, _node(dot, "output")):
        assert "not run: after the early exit" in attrs and "skipped" in attrs
        assert "dashed" in attrs
    # data flow where the tensors pass through, call order (dotted) where they are rebuilt
    assert "dotted" not in (_edge(dot, "input", "body.x") or "missing")
    assert "dotted" in (_edge(dot, "body.output", "head.gate") or "")
    assert _edge(dot, "head.gate", "head.fc") is not None
    assert "untraced module call" in dot and "not run: after the early exit" in dot


def test_late_tap_runs_everything(tmp_path: Path) -> None:
    ex = _capture(ListPipeline(), {"head.fc": "logits", "head": "out"})
    dot = _dot(ex, tmp_path)
    assert "not run" not in dot and "skipped" not in dot
    fc = _node(dot, "head.fc")
    assert "untraced: leaf module" in fc and "output &#x27;logits&#x27;" in fc
    assert 'style="filled,diagonals"' in _node(dot, "head.gate")  # hatched: runs eagerly
    # the output of an untraced module without a drawn node of its own gets a tap node
    out = _node(dot, "head:output")
    assert "output &#x27;out&#x27;" in out and 'penwidth="3"' in out
    assert _edge(dot, "head.fc", "head:output") is not None


def test_island_output_and_module_input_taps(tmp_path: Path) -> None:
    ex = _capture(ListPipeline(), {"body": "feat", "head.gate:input": "pooled"})
    dot = _dot(ex, tmp_path)
    assert "output &#x27;feat&#x27;" in _node(dot, "body.output")
    assert "output &#x27;pooled&#x27;" in _node(dot, "head.gate:input")
    assert _edge(dot, "head.gate:input", "head.gate") is not None
    assert "not run" in _node(dot, "head.fc")


def test_render_leaves_the_extractor_as_it_was(tmp_path: Path) -> None:
    ex = _capture(ListPipeline(), ["body.conv2"])
    hooks = {p: (len(m._forward_hooks), len(m._forward_pre_hooks)) for p, m in ex.named_modules()}
    rng = torch.get_rng_state()
    _dot(ex, tmp_path)
    assert torch.equal(rng, torch.get_rng_state())
    assert hooks == {
        p: (len(m._forward_hooks), len(m._forward_pre_hooks)) for p, m in ex.named_modules()
    }
    assert not ex.training
    with torch.no_grad():
        got = ex(IMAGES)["body.conv2"]
        want = ex.model.body.conv2(ex.model.body.bn(ex.model.body.conv1(IMAGES[0][None])).relu())
    assert torch.equal(got, want)


def test_example_inputs_are_needed(tmp_path: Path) -> None:
    ex = _capture(ListPipeline(), ["body.conv1"])
    with pytest.raises(InvalidArgumentError, match=r"example_inputs=.*--input"):
        fxtap.render(ex, mode="eval", fmt="dot", out_dir=tmp_path)
    with pytest.raises(InvalidArgumentError, match="example_inputs 3 is a int"):
        fxtap.render(ex, mode="eval", example_inputs=3, fmt="dot", out_dir=tmp_path)
    with pytest.raises(InvalidArgumentError, match="nodes= is for a model"):
        fxtap.render(ex, mode="eval", example_inputs=IMAGES, nodes=["body"], out_dir=tmp_path)


def test_a_mode_the_model_refuses_is_left_out_with_a_note(tmp_path: Path) -> None:
    ex = _capture(ListPipeline(), ["body.conv1"])
    with pytest.warns(UserWarning, match=r"could not be drawn in train mode.*targets are needed"):
        r = fxtap.render(ex, example_inputs=IMAGES, fmt="dot", out_dir=tmp_path)
    assert [d.mode for d in r.drawings] == ["eval"]
    assert "mode='eval'" in r.messages[0] and "--mode eval" in r.messages[0]
    with pytest.raises(InvalidArgumentError, match="could not be drawn in train mode"):
        fxtap.render(ex, mode="train", example_inputs=IMAGES, fmt="dot", out_dir=tmp_path)
    # with targets the train mode is drawn too
    r = fxtap.render(ex, example_inputs=(IMAGES, [torch.zeros(1)]), fmt="dot", out_dir=tmp_path)
    assert {d.mode for d in r.drawings} >= {"train", "eval"}
    assert "body.conv1" in r.drawings[0].dot_path.read_text(encoding="utf-8")


def test_a_model_whose_root_cannot_be_traced_is_drawn_by_its_calls(tmp_path: Path) -> None:
    model = ListPipeline().eval()
    r = fxtap.render(model, mode="eval", example_inputs=IMAGES, fmt="dot", out_dir=tmp_path)
    dot = r.drawings[0].dot_path.read_text(encoding="utf-8")
    assert "⇒ output" in _node(dot, "output") and "not run" not in dot
    assert "untraced: forward not traceable" in _node(dot, "head.gate")
    assert 'subgraph "cluster_body"' in dot
    r = fxtap.render(
        model, mode="eval", nodes=["body.bn"], example_inputs=IMAGES, fmt="dot", out_dir=tmp_path
    )
    dot = r.drawings[0].dot_path.read_text(encoding="utf-8")
    assert "requested" in _node(dot, "body.bn") and "not run" in _node(dot, "head.fc")


@needs_dot
def test_svg_and_viewer(tmp_path: Path) -> None:
    ex = _capture(ListPipeline(), ["body.conv1"])
    r = fxtap.render(ex, mode="eval", example_inputs=IMAGES, out_dir=tmp_path, html=True)
    svg = next(p for p in r.paths if p.suffix == ".svg").read_text(encoding="utf-8")
    assert 'id="head.gate"' in svg and "skipped" in svg and "untraced" in svg
    assert r.html is not None and "head.gate" in r.html.read_text(encoding="utf-8")


@pytest.mark.filterwarnings("ignore:torch.fx cannot trace the root")
@pytest.mark.filterwarnings("ignore:ListPipeline could not be drawn")  # the CLI prints it as a note
def test_cli_render_and_bench(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from fxtap.cli import main

    spec = ["support.models:ListPipeline", "--nodes", "body.conv1"]
    assert main(["render", *spec, "-o", str(tmp_path), "--format", "dot"]) == 1
    assert "--input" in capsys.readouterr().err
    argv = ["render", *spec, "--input", "2x3x8x8", "-o", str(tmp_path), "--format", "dot"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "note: ListPipeline could not be drawn in train mode" in captured.err
    assert f"wrote {tmp_path / 'ListPipeline.eval.dot'}" in captured.out
    dot = (tmp_path / "ListPipeline.eval.dot").read_text(encoding="utf-8")
    assert "untraced: forward not traceable" in _node(dot, "head.gate")
    argv = ["bench", *spec, "--input", "2x3x8x8", "--rounds", "1", "--min-run-time", "0.01"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert table.startswith("ListPipeline -> body.conv1") and "capture extractor" in table
