"""Tests for fxtap/render.py: golden DOT text, SVG ids, Chromium, dot missing or slow.

Golden files live in tests/golden/; refresh them after an intended change with
``FXTAP_UPDATE_GOLDEN=1 pytest tests/test_render.py`` and review the diff.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from torch import nn

from fxtap import DotNotFoundError, InvalidArgumentError, NodeNotFoundError, OutputPathError
from fxtap.extractor import create_feature_extractor
from fxtap.render import Rendering, render
from fxtap.trace import trace
from support.models import DropoutNet, Nested, TinyUNet, TrainOnlyBranch
from support.render import blank

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("FXTAP_UPDATE_GOLDEN") == "1"
NO_SOURCE = {"record_source": False}
needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None, reason="Graphviz's dot is not installed"
)
SVG_NS = "{http://www.w3.org/2000/svg}"
ODD = "a<b>&'c'|{d} e"


class OddNames(nn.Module):
    """A ModuleDict key with characters that break DOT records and HTML: ``<>&"|{}`` and space."""

    def __init__(self) -> None:
        super().__init__()
        self.parts = nn.ModuleDict({ODD: nn.Linear(3, 3), "plain": nn.ReLU()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.parts["plain"](self.parts[ODD](x)) * 2


class Block(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x + self.fc(x).masked_fill(mask, 0.0)


class MaskedStack(nn.Module):
    """A GPT-like stack: one mask feeds every layer (a hub edge)."""

    def __init__(self, n: int = 8, d: int = 8) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(d) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(x, dtype=torch.bool).triu(1)
        for layer in self.layers:
            x = layer(x, mask)
        return x


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"golden file {path} is missing; create it with FXTAP_UPDATE_GOLDEN=1")
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} differs; see the module docstring"


def dot_text(result: Rendering, mode: str) -> str:
    (drawing,) = [d for d in result.drawings if d.mode == mode]
    return drawing.dot_path.read_text(encoding="utf-8")


def node_ids(dot: str) -> list[str]:
    """Node ids declared in DOT text written by fxtap (one statement per line)."""
    ids = re.findall(r'^\s*"(?:[^"\\]|\\.)*" \[id="((?:[^"\\]|\\.)*)"', dot, flags=re.M)
    # attribute values write "&" as "&amp;" (Graphviz would decode an entity in a name)
    return [i.replace('\\"', '"').replace("\\\\", "\\").replace("&amp;", "&") for i in ids]


def svg_ids(path: Path) -> set[str]:
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG_NS}svg"
    return {el.attrib["id"] for el in root.iter() if "id" in el.attrib}


# --- golden DOT text -------------------------------------------------------------------------


def test_golden_nested_eval_folds_repeated_blocks(tmp_path: Path) -> None:
    r = render(Nested(), mode="eval", fmt="dot", out_dir=tmp_path, tracer_kwargs=NO_SOURCE)
    text = dot_text(r, "eval")
    check_golden("nested.eval.dot", text)
    assert "×2" in text and '"stage.blocks.1.conv"' not in text
    assert r.paths == (tmp_path / "Nested.eval.dot",)


def test_golden_train_only_branch_marked_in_train_drawing(tmp_path: Path) -> None:
    r = render(TrainOnlyBranch(), fmt="dot", out_dir=tmp_path, tracer_kwargs=NO_SOURCE)
    train, eval_ = dot_text(r, "train"), dot_text(r, "eval")
    check_golden("train_only.train.dot", train)
    check_golden("train_only.eval.dot", eval_)
    assert "train only" in train and "2 only in train mode" in train
    assert "only" not in eval_.replace("only_", "")
    # Both drawings side by side, ids prefixed by mode so they stay unique.
    both = dot_text(r, "both")
    assert '"train:randn_like"' in both and '"eval:fc"' in both


def test_golden_dropout_in_both_modes(tmp_path: Path) -> None:
    r = render(DropoutNet(), mode="train", fmt="dot", out_dir=tmp_path, tracer_kwargs=NO_SOURCE)
    text = dot_text(r, "train")
    check_golden("dropout.train.dot", text)
    assert node_ids(text) == ["x", "fc", "drop", "dropout", "output", "fxtap:legend"]


def test_golden_extractor_pruned_dashed_and_folded(tmp_path: Path) -> None:
    model = Nested()
    ex = create_feature_extractor(
        model, {"stage.blocks.0.relu": "mid"}, tracer_kwargs=NO_SOURCE, keep_traces=True
    )
    text = dot_text(render(ex, mode="eval", fmt="dot", out_dir=tmp_path), "eval")
    check_golden("extractor_pruned.eval.dot", text)
    assert re.search(r'"head" \[[^\n]*style="rounded,dashed"', text)
    assert re.search(r'"stage.blocks.0.relu" \[[^\n]*penwidth="3"', text)
    assert "⇒ output &#x27;mid&#x27;" in text
    folded = dot_text(render(ex, mode="eval", fmt="dot", out_dir=tmp_path, pruned="fold"), "eval")
    check_golden("extractor_pruned_fold.eval.dot", folded)
    assert "pruned ops" in folded and '"head" [' not in folded


def test_golden_odd_names_escaped_with_shapes(tmp_path: Path) -> None:
    r = render(
        OddNames(),
        mode="eval",
        fmt="dot",
        out_dir=tmp_path,
        tracer_kwargs=NO_SOURCE,
        example_inputs=(torch.zeros(2, 3),),
    )
    text = dot_text(r, "eval")
    check_golden("odd_names.eval.dot", text)
    assert f"parts.{ODD}" in node_ids(text)
    assert "<b>a&lt;b&gt;&amp;&#x27;c&#x27;|{d} e</b>" in text
    assert "2×3 float32" in text


# --- what a drawing shows ----------------------------------------------------------------------


def test_node_tooltip_has_name_op_target_params_and_source(tmp_path: Path) -> None:
    text = dot_text(render(Nested(), mode="eval", fmt="dot", out_dir=tmp_path), "eval")
    line = next(ln for ln in text.splitlines() if ln.strip().startswith('"head" ['))
    tooltip = re.search(r'tooltip="([^"]*)"', line).group(1)  # type: ignore[union-attr]
    assert tooltip.split("\\n")[:3] == ["head", "op: call_module", "target: head"]
    assert "parameters: 10" in tooltip and "tests/support/models.py:" in tooltip


def test_parameters_are_folded_into_their_user(tmp_path: Path) -> None:
    class UsesWeight(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(3, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.w

    text = dot_text(render(UsesWeight(), mode="eval", fmt="dot", out_dir=tmp_path), "eval")
    assert node_ids(text) == ["x", "matmul", "output", "fxtap:legend"]
    assert "parameters: 9" in text


def test_requested_nodes_of_a_model_prune_what_they_do_not_need(tmp_path: Path) -> None:
    r = render(Nested(), mode="eval", fmt="dot", out_dir=tmp_path, nodes={"stem": "s"})
    text = dot_text(r, "eval")
    assert re.search(r'"stem" \[[^\n]*penwidth="3"', text)
    assert re.search(r'"x" \[(?![^\n]*dashed)', text)
    assert re.search(r'"head" \[[^\n]*dashed', text)


def test_unknown_node_names_close_matches() -> None:
    with pytest.raises(NodeNotFoundError, match=r"'stage.blocks.0.relu'"):
        render(Nested(), fmt="dot", nodes=["stage.blocks.relu"])


def test_repeats_unfold_around_a_requested_node(tmp_path: Path) -> None:
    r = render(Nested(), mode="eval", fmt="dot", out_dir=tmp_path, nodes=["stage.blocks.1.add"])
    ids = node_ids(dot_text(r, "eval"))
    assert "stage.blocks.0.conv" in ids and "stage.blocks.1.conv" in ids


def test_numbered_names_fold_only_with_the_same_stem_and_sizes(tmp_path: Path) -> None:
    def pair(width: int = 4) -> nn.Module:
        return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 4))

    model = nn.Sequential()
    for name, width in [("enc_0", 4), ("enc_1", 4), ("enc_2", 4), ("dec_3", 4), ("enc_4", 8)]:
        model.add_module(name, pair(width))
    text = dot_text(render(model, mode="eval", fmt="dot", out_dir=tmp_path), "eval")
    assert "enc_0 … enc_2  ×3" in text
    assert [i for i in node_ids(text) if i.endswith(".0")] == ["enc_0.0", "dec_3.0", "enc_4.0"]


def _edges(text: str) -> set[tuple[str, str]]:
    """Drawn edges, those split across wrapped columns (``fxtap:to:A>B``) as ``(A, B)``."""
    pairs = re.findall(r'^\s*"([^"]+)" -> "([^"]+)"', text, flags=re.M)
    return {(a, b.rpartition(">")[2] if b.startswith("fxtap:to:") else b) for a, b in pairs}


def test_unet_skips_keep_the_encoders_and_decoders_unfolded(tmp_path: Path) -> None:
    """enc1 and enc2 each feed a decoder of their own: folded, both skips would seem to leave
    enc1; the same goes for dec2 and dec1, each feeding its own next op."""
    text = dot_text(render(TinyUNet(), mode="eval", fmt="dot", out_dir=tmp_path), "eval")
    assert "×2" not in text
    ids = node_ids(text)
    assert {"enc1.0", "enc2.0", "dec2.0", "dec1.0"} <= set(ids)
    assert {("enc1.2", "cat_1"), ("enc2.2", "cat"), ("enc1.2", "down1")} <= _edges(text)
    # a tail cut at mid reads both encoders' features from its boundary: all three crossings
    # (the input, enc1, enc2) are drawn, none folded into another
    import fxtap

    _, tail = fxtap.split(TinyUNet(), "mid")
    drawn = dot_text(render(tail, mode="eval", fmt="dot", out_dir=tmp_path), "eval")
    assert drawn.count("✂ crosses the cut") == 3 and "×2" not in drawn
    # the same siblings with one consumer each in a chain still fold
    chain = nn.Sequential()
    for i in range(3):
        chain.add_module(f"enc{i}", nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()))
    folded = dot_text(render(chain, mode="eval", fmt="dot", out_dir=tmp_path), "eval")
    assert "enc0 … enc2  ×3" in folded


@pytest.mark.parametrize("case", ["edit", "split head", "split tail"])
def test_marked_nodes_are_never_folded_away(case: str, tmp_path: Path) -> None:
    """Blocks that would fold (identical, in a chain) stay open around a cut or an edit."""
    import fxtap
    from fxtap.edits import Scale

    torch.manual_seed(0)
    stack = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(6)])
    assert "×6" in dot_text(render(stack, mode="eval", fmt="dot", out_dir=tmp_path), "eval")
    if case == "edit":
        module: nn.Module = fxtap.edit(stack, {"3.0": Scale(2.0)})
        mark = "✎ edited"
    else:
        head, tail = fxtap.split(stack, "3.0")
        module = head if case == "split head" else tail
        mark = "✂ cut here"  # in both halves: the head computes it, the tail reads it
    text = dot_text(render(module, mode="eval", fmt="dot", out_dir=tmp_path), "eval")
    assert text.count(mark) == 1
    assert "3.0" in node_ids(text) or "3.0.edit" in node_ids(text)
    # the marked block stays open: folds stop at it
    assert not re.search(r"×[4-6]\b", text)


def test_depth_and_max_nodes_collapse_but_keep_requested_modules_open(tmp_path: Path) -> None:
    r = render(Nested(), mode="eval", fmt="dot", out_dir=tmp_path, depth=0)
    assert node_ids(dot_text(r, "eval")) == [
        "x",
        "stem",
        "stage",
        "mean",
        "head",
        "output",
        "fxtap:legend",
    ]
    r = render(
        Nested(), mode="eval", fmt="dot", out_dir=tmp_path, max_nodes=3, nodes=["stage.relu"]
    )
    ids = node_ids(dot_text(r, "eval"))
    assert "stage.relu" in ids and "stage.blocks" in ids and "stage" not in ids


def test_hub_edges_become_references(tmp_path: Path) -> None:
    r = render(MaskedStack(), mode="eval", fmt="dot", out_dir=tmp_path, fold_repeats=False)
    text = dot_text(r, "eval")
    assert len(re.findall(r'^\s*"triu" ->', text, flags=re.M)) == 2
    assert len(re.findall(r'"triu@ref\d+" ->', text)) == 6
    folded = dot_text(render(MaskedStack(), mode="eval", fmt="dot", out_dir=tmp_path), "eval")
    assert "×8" in folded and "@ref" not in folded


def test_opaque_leaves_and_heat(tmp_path: Path) -> None:
    traced = trace(Nested(), training=False, tracer_kwargs=NO_SOURCE)
    traced = dataclasses.replace(traced, leaves=("head",))
    text = dot_text(
        render(traced, mode="eval", fmt="dot", out_dir=tmp_path, heat={"stem": 4.0, "head": 1.0}),
        "eval",
    )
    assert re.search(r'"head" \[[^\n]*shape="box3d"', text)
    assert re.search(r'"stem" \[[^\n]*fillcolor="#440154"[^\n]*fontcolor="white"', text)
    assert "opaque leaf (fallback)" in text


def test_model_and_extractor_are_left_untouched(tmp_path: Path) -> None:
    model = Nested().train()
    model.head.eval()
    ex = create_feature_extractor(model, ["stage"], keep_traces=True)
    render(ex, fmt="dot", out_dir=tmp_path, example_inputs=torch.zeros(1, 3, 4, 4))
    render(model, fmt="dot", out_dir=tmp_path, example_inputs=torch.zeros(1, 3, 4, 4))
    assert model.training and not model.head.training
    assert all(
        "tensor_meta" not in n.meta for t in ex.full.values() for n in t.graph_module.graph.nodes
    )


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("mode", "test"),
        ("fmt", "jpg"),
        ("depth", -1),
        ("max_nodes", 0),
        ("timeout", 0),
        ("pruned", "x"),
    ],
)
def test_bad_options(option: str, value: object) -> None:
    with pytest.raises(InvalidArgumentError, match=option):
        render(Nested(), **{option: value})  # type: ignore[arg-type]


def test_default_output_folder_is_a_fresh_temporary_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without out_dir nothing lands in the current folder (once, Nested.*.dot in the repo root)."""
    repo, temp = tmp_path / "repo", tmp_path / "temp"
    repo.mkdir()
    temp.mkdir()
    monkeypatch.chdir(repo)
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    first = render(create_feature_extractor(Nested(), ["stem"]), fmt="dot")
    second = render(Nested(), mode="eval", fmt="dot")
    assert list(repo.iterdir()) == []
    folders = {p.parent for r in (first, second) for p in r.paths}
    assert len(folders) == 2
    assert all(f.parent == temp and f.name.startswith("fxtap-render-") for f in folders)
    assert {p.name for p in first.paths} >= {"Nested.train.dot", "Nested.eval.dot"}


def test_unwritable_output_dir_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputPathError, match=re.escape(str(blocker / "out"))):
        render(Nested(), fmt="dot", out_dir=blocker / "out")


# --- running dot -------------------------------------------------------------------------------


def test_dot_missing_raises_with_install_hint_and_writes_dot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(DotNotFoundError, match="apt-get install graphviz"):
        render(Nested(), mode="eval", out_dir=tmp_path)
    assert "digraph" in (tmp_path / "Nested.eval.dot").read_text()
    with pytest.raises(DotNotFoundError, match="no-such-dot"):
        render(Nested(), mode="eval", out_dir=tmp_path, dot="no-such-dot")


def fake_dot(tmp_path: Path, fast_works: bool) -> str:
    """A stand-in for dot that hangs unless the graph asks for fast settings."""
    script = tmp_path / "fake-dot"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys, time\n"
        "text = sys.stdin.read()\n"
        f"if {fast_works} and 'splines=\"line\"' in text:\n"
        '    sys.stdout.write(\'<svg width="1pt" height="1pt"/>\')\n'
        "    sys.exit(0)\n"
        "time.sleep(30)\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_slow_dot_falls_back_to_fast_settings(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="with fast settings"):
        r = render(Nested(), mode="eval", out_dir=tmp_path, dot=fake_dot(tmp_path, True), timeout=2)
    (drawing,) = r.drawings
    assert drawing.layout == "fast" and drawing.path is not None and drawing.path.exists()
    assert 'splines="line"' in drawing.dot_path.read_text()


def test_dot_out_of_time_writes_dot_only(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="DOT text only"):
        r = render(
            Nested(), mode="eval", out_dir=tmp_path, dot=fake_dot(tmp_path, False), timeout=2
        )
    (drawing,) = r.drawings
    assert drawing.layout == "none" and drawing.path is None and drawing.dot_path.exists()


@needs_dot
def test_svg_has_an_element_per_drawn_node(tmp_path: Path) -> None:
    model = OddNames()
    r = render(model, out_dir=tmp_path, fold_repeats=False)
    for mode in ("train", "eval"):
        (drawing,) = [d for d in r.drawings if d.mode == mode]
        assert drawing.path is not None
        expected = set(node_ids(drawing.dot_path.read_text()))
        assert f"parts.{ODD}" in expected
        assert expected <= svg_ids(drawing.path)
    # Identical train and eval graphs: one drawing that says so, no side-by-side copy.
    both = (tmp_path / "OddNames.both.svg").read_text()
    assert "train and eval: identical graphs" in both and f"parts.{ODD}" in svg_ids(
        tmp_path / "OddNames.both.svg"
    )
    svg = r._repr_svg_()
    assert svg is not None and "<svg" in svg
    r = render(TrainOnlyBranch(), out_dir=tmp_path)
    both_ids = svg_ids(tmp_path / "TrainOnlyBranch.both.svg")
    assert {"train:randn_like", "train:fc", "eval:fc", "train:output", "eval:output"} <= both_ids


@needs_dot
def test_nested_svg_ids_match_trace_names(tmp_path: Path) -> None:
    model = Nested()
    r = render(model, mode="eval", out_dir=tmp_path, fold_repeats=False)
    names = {n for node, n in trace(model, training=False).names.items() if node.op != "get_attr"}
    assert names <= svg_ids(r.drawings[0].path)  # type: ignore[arg-type]


@needs_dot
@pytest.mark.parametrize(("fmt", "magic"), [("png", b"\x89PNG"), ("pdf", b"%PDF")])
def test_png_and_pdf(tmp_path: Path, fmt: str, magic: bytes) -> None:
    r = render(TrainOnlyBranch(), out_dir=tmp_path, fmt=fmt)
    assert [d.mode for d in r.drawings] == ["train", "eval", "both"]
    for d in r.drawings:
        assert d.path is not None and d.path.read_bytes().startswith(magic)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@needs_dot
@pytest.mark.chromium
@pytest.mark.skipif(
    _chromium() is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
def test_svg_renders_in_headless_chromium(tmp_path: Path) -> None:
    r = render(Nested(), mode="eval", out_dir=tmp_path)
    page = tmp_path / "page.html"
    page.write_text(f"<html><body style='margin:0;background:white'>{r._repr_svg_()}</body></html>")
    shot = tmp_path / "shot.png"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=800,1200",
        page.as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG")
    assert not blank(png)


# --- readable defaults (issue: drawings a person can read) -------------------------------------


class Checked(nn.Module):
    """ViT-style input-size check: getattr/eq/_assert nodes that feed nothing but the assert."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        _n, d = x.shape
        torch._assert(d == 4, "wrong width")
        return self.fc(x), None


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.attn(x, x, x, need_weights=False)
        return out


def test_input_checks_hidden_unless_asked(tmp_path: Path) -> None:
    hidden = dot_text(render(Checked(), mode="eval", fmt="dot", out_dir=tmp_path), "eval")
    assert "_assert" not in node_ids(hidden) and "input-check nodes hidden" in hidden
    shown = render(Checked(), mode="eval", fmt="dot", out_dir=tmp_path, checks=True)
    assert "_assert" in node_ids(dot_text(shown, "eval"))


def test_none_and_tuple_values_are_shown_as_what_they_are(tmp_path: Path) -> None:
    from fxtap.names import node_table

    x = torch.zeros(1, 3, 4)
    text = dot_text(
        render(Attention(), mode="eval", fmt="dot", out_dir=tmp_path, example_inputs=x), "eval"
    )
    assert "(1×3×4 float32, None)" in text
    rows = {r.name: r for r in node_table(Attention(), example_inputs=(x,))}
    assert rows["attn"].shape is None and rows["attn"].value == "(1×3×4 float32, None)"
    assert rows["x"].value is None and rows["x"].shape == (1, 3, 4)
    rows = {r.name: r for r in node_table(Checked(), example_inputs=(torch.zeros(2, 4),))}
    assert rows["_assert"].value == "None" and rows["getitem_1"].value == "int 4"


def test_an_unnamed_output_tuple_keeps_the_output_connected(tmp_path: Path) -> None:
    import collections

    Pair = collections.namedtuple("Pair", "a b")

    class Named(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> Pair:
            return Pair(self.fc(x), x)

    text = dot_text(render(Named(), mode="eval", fmt="dot", out_dir=tmp_path), "eval")
    assert '"fc" -> "output"' in text and '"x" -> "output"' in text


def test_labels_are_the_shortest_unique_suffix(tmp_path: Path) -> None:
    r = render(Nested(), mode="eval", fmt="dot", out_dir=tmp_path, fold_repeats=False)
    labels = dict(
        re.findall(
            r'^\s*"([^"]+)" \[id="[^"]*".*?label=<<b>([^<]*)</b>', dot_text(r, "eval"), flags=re.M
        )
    )
    assert labels["head"] == "head"
    assert labels["stage.blocks.0.conv"] == "0.conv" and labels["stage.blocks.1.conv"] == "1.conv"
    assert labels["stage.relu"] == "stage.relu"  # 'relu' alone is also stage.blocks.N.relu
    assert len(set(labels.values())) == len(labels)


@needs_dot
def test_long_chain_wraps_into_columns(tmp_path: Path) -> None:
    chain = nn.Sequential(*[nn.Linear(4, 4) for _ in range(120)])
    r = render(chain, mode="eval", out_dir=tmp_path, max_nodes=None)
    (drawing,) = r.drawings
    dot = drawing.dot_path.read_text()
    assert "part 1 of" in dot and "constraint=false" not in dot
    assert '"fxtap:to:' in dot and '"fxtap:from:' in dot  # edges between columns are stubs
    svg = drawing.path.read_text()  # type: ignore[union-attr]
    w, h = (float(re.search(rf'{k}="([\d.]+)pt"', svg).group(1)) for k in ("width", "height"))  # type: ignore[union-attr]
    assert max(w / h, h / w) <= 3, (w, h)
    assert len(re.findall(r'class="node[ "]', svg)) >= 122


def test_identical_modes_draw_once_and_say_so(tmp_path: Path) -> None:
    r = render(Nested(), fmt="dot", out_dir=tmp_path)
    assert [d.mode for d in r.drawings] == ["train", "eval", "both"]
    assert all("train and eval: identical graphs" in d.dot_path.read_text() for d in r.drawings)
    different = render(TrainOnlyBranch(), fmt="dot", out_dir=tmp_path)
    assert "identical" not in dot_text(different, "both")


def test_extractor_built_without_traces_draws_what_it_kept(tmp_path: Path) -> None:
    """No unpruned traces (keep_traces=False, or loaded from disk): the kept graph is drawn."""
    ex = create_feature_extractor(Nested(), ["stem"])
    assert ex.full == {}
    text = dot_text(render(ex, fmt="dot", out_dir=tmp_path), "eval")
    kept = set(ex.node_names("eval"))
    assert kept and all(f'id="{name}"' in text for name in kept)
    full = create_feature_extractor(Nested(), ["stem"], keep_traces=True)
    pruned = set(full.full["eval"].names.values()) - kept
    assert pruned and not any(f'id="{name}"' in text for name in pruned)
