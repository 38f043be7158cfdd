"""The command line, run in-process with ``main([...])``: output, files, exit codes, messages."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from fxtap.cli import main
from fxtap.cli._demo import run
from fxtap.cli._models import load_model, make_inputs, parse_input, parse_model_args
from fxtap.save import load

NESTED = "tests/support/models.py:Nested"
SMALL = ["--input", "1x3x8x8"]
NOISE = pytest.mark.filterwarnings("ignore:latency of:UserWarning")


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])


def one_error_line(capsys) -> str:
    """The one error line; progress lines of slow steps (on a busy machine) are allowed."""
    err = capsys.readouterr().err.strip().splitlines()
    err = [e for e in err if not e.endswith(" ...") and " done in " not in e]
    assert len(err) == 1, err
    assert err[0].startswith("fxtap: error: ")
    assert "Traceback" not in err[0]
    return err[0]


# --- nodes -----------------------------------------------------------------------------------


def test_nodes_prints_the_table(capsys):
    assert main(["nodes", NESTED]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["name", "op", "target", "module", "params"]
    rows = {line.split()[0]: line.split() for line in out[1:]}
    assert rows["stem"][1:4] == ["call_module", "stem", "Conv2d"]
    assert rows["stem"][4] == "16"  # 3*4 weights + 4 biases
    assert rows["stage.blocks.0.add"][1] == "call_function"
    assert next(iter(rows)) == "x" and "head" in rows


def test_nodes_with_input_shows_shapes_and_writes_json(capsys, tmp_path):
    path = tmp_path / "nodes.json"
    assert main(["nodes", NESTED, *SMALL, "--json", str(path), "--mode", "train"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[-2:] == ["shape", "dtype"]
    stem = next(line.split() for line in out if line.startswith("stem "))
    assert stem[-2:] == ["1x4x8x8", "float32"]
    data = json.loads(path.read_text())
    assert data[1]["name"] == "stem" and data[1]["shape"] == [1, 4, 8, 8]
    assert {"name", "op", "target", "module_type", "num_params", "dtype"} <= set(data[0])


def test_input_dtypes(capsys):
    assert [t.dtype for t in make_inputs([parse_input("1x2:float16"), parse_input("3")])] == [
        torch.float16,
        torch.float32,
    ]
    assert make_inputs([parse_input("2x2")], dtype=torch.int64)[0].dtype == torch.int64
    assert main(["nodes", NESTED, "--input", "1x3x8x8:float64"]) == 1
    assert "does not fit Nested" in one_error_line(capsys)


def test_torchvision_spec_and_model_args(capsys):
    args = ["nodes", "torchvision:resnet18", "--model-arg", "num_classes=7", "--input", "1x3x32x32"]
    assert main(args) == 0
    fc = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fc "))
    assert fc.split()[-2:] == ["1x7", "float32"]


def test_python_m_fxtap_runs_the_same_main():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "fxtap", "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and done.stdout.startswith("fxtap ")


# --- extract ---------------------------------------------------------------------------------


def test_extract_saves_an_extractor_that_loads(capsys, tmp_path):
    path = tmp_path / "nested.fxtap"
    argv = ["extract", NESTED, "--nodes", "stage", "stem=first", *SMALL, "-o", str(path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Nested extractor in eval mode, 2 output(s):" in out
    assert "stage  <- stage.relu  1x4x8x8 float32" in out
    assert "first  <- stem  1x4x8x8 float32" in out
    assert f"saved {path} (" in out and "format fxtap, eval mode)" in out
    loaded = load(path)
    assert loaded.outputs["eval"] == {"stage": "stage.relu", "first": "stem"}
    x = make_inputs([parse_input("1x3x8x8")])
    assert loaded.eval()(*x)["stage"].shape == (1, 4, 8, 8)


def test_extract_pickle_needs_trust_to_read_back(capsys, tmp_path):
    path = tmp_path / "nested.pt"
    argv = ["extract", NESTED, "--nodes", "stage", *SMALL, "-o", str(path), "--format", "pickle"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["nodes", str(path)]) == 1
    assert "--trust" in one_error_line(capsys)
    assert main(["nodes", str(path), "--trust"]) == 0
    # A pickle carries fxtap's node names along with its code (node.meta is not pickled).
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert names[:2] == ["x", "stem"] and names[-1] == "stage.relu"


def test_nodes_of_a_saved_extractor_lists_its_kept_nodes(capsys, tmp_path):
    path = tmp_path / "nested.fxtap"
    assert main(["extract", NESTED, "--nodes", "stage.blocks.0", *SMALL, "-o", str(path)]) == 0
    capsys.readouterr()
    assert main(["nodes", str(path), *SMALL]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert names[-1] == "stage.blocks.0.add" and "stage.blocks.1.conv" not in names


def test_unknown_node_is_one_line_with_close_matches(capsys, tmp_path):
    argv = ["extract", NESTED, "--nodes", "stage.relu_9", *SMALL, "-o", str(tmp_path / "x")]
    assert main(argv) == 1
    line = one_error_line(capsys)
    assert "'stage.relu_9'" in line and "'stage.relu'" in line
    assert not (tmp_path / "x").exists()


def test_unwritable_output_paths(capsys, tmp_path):
    missing = tmp_path / "no" / "such" / "dir" / "x.fxtap"
    argv = ["extract", NESTED, "--nodes", "stage", *SMALL, "-o", str(missing)]
    assert main(argv) == 1
    assert "does not exist" in one_error_line(capsys)
    assert main(["extract", NESTED, "--nodes", "stage", *SMALL, "-o", str(tmp_path)]) == 2
    assert "it is a directory" in one_error_line(capsys)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["nodes", NESTED, "--json", str(blocker / "nodes.json")]) == 1
    assert "cannot write" in one_error_line(capsys)
    assert main(["demo", "-o", str(blocker / "out")]) == 1
    assert "cannot create the output folder" in one_error_line(capsys)


def test_input_that_does_not_fit_the_model(capsys, tmp_path):
    argv = ["extract", NESTED, "--nodes", "stage", "--input", "1x5x8x8", "-o", str(tmp_path / "x")]
    assert main(argv) == 1
    line = one_error_line(capsys)
    assert "1x5x8x8" in line or "channels" in line or "size" in line


# --- bad usage (exit 2) and bad specs (exit 1) -----------------------------------------------


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["nodes", NESTED, "--input", "1x3xAx8"], "not positive integers"),
        (["nodes", NESTED, "--input", "1x3x8x8:float17"], "dtype 'float17'"),
        (["nodes", NESTED, "--dtype", "complex"], "dtype 'complex'"),
        (["nodes", NESTED, "--mode", "test"], "invalid choice"),
        (["extract", NESTED, "-o", "x.fxtap"], "--nodes"),
        (["extract", NESTED, "--nodes", "stage"], "-o/--output"),
        (["render", NESTED, "--depth", "0"], "must be 1 or more"),
        (["bench", NESTED, "--nodes", "stage", "--min-run-time", "inf"], "finite number of sec"),
        (["bench", NESTED, "--nodes", "stage", "--min-run-time", "nan"], "got 'nan'"),
        (["bench", NESTED, "--nodes", "stage", "--min-run-time", "0"], "above 0 and at most 60"),
        (["bench", NESTED, "--nodes", "stage", "--rounds", "99999999999"], "from 1 to 1000"),
        (["frobnicate"], "invalid choice"),
        (["nodes"], "MODEL"),
    ],
)
def test_bad_usage_exits_2(capsys, argv, needle):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_no_subcommand_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "nodes" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec", "needles"),
    [
        ("torchvision:resnet81", ["no model 'resnet81'", "'resnet18'"]),
        ("resnet18", ["no 'SOURCE:NAME' form", "'torchvision:resnet18'"]),
        ("no_such_package_xyz:build", ["cannot import module 'no_such_package_xyz'"]),
        ("tests/support/models.py:Nestd", ["has no attribute 'Nestd'", "'Nested'"]),
        ("tests/nope.py:Nested", ["does not exist"]),
        ("tests/support/models.py:EXPECTED_NAMES", ["not a callable"]),
        ("torch.nn:Identity", []),  # builds fine: exit 0 is checked below
    ],
)
def test_bad_model_specs_exit_1_with_what_was_tried(capsys, spec, needles):
    code = main(["nodes", spec])
    if not needles:
        assert code == 0
        return
    assert code == 1
    line = one_error_line(capsys)
    assert f"'{spec}'" in line or spec.split(":")[1] in line
    for needle in needles:
        assert needle in line


def test_bad_model_arg(capsys):
    assert main(["nodes", "torchvision:resnet18", "--model-arg", "num_clases=3"]) == 1
    assert "num_clases" in one_error_line(capsys)
    assert main(["nodes", "torchvision:resnet18", "--model-arg", "3=x"]) == 1
    assert "key=value" in one_error_line(capsys)


def test_debug_shows_the_traceback(capsys):
    assert main(["nodes", "torchvision:resnet81", "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("fxtap: error: ")


def test_model_args_are_literals_or_strings():
    assert parse_model_args(["a=1", "b=(1, 2)", "c=hello", "d=None", "e= 2.5 "]) == {
        "a": 1,
        "b": (1, 2),
        "c": "hello",
        "d": None,
        "e": 2.5,
    }
    assert isinstance(load_model("torchvision:resnet18", {"num_classes": 3}).fc, torch.nn.Linear)


# --- render, bench, demo ---------------------------------------------------------------------


def test_render_writes_dot_for_both_modes(capsys, tmp_path):
    argv = ["render", NESTED, "--nodes", "stage", "--format", "dot", "-o", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out.split()
    written = {Path(p).name for p in out if p.endswith(".dot")}
    assert {"Nested.train.dot", "Nested.eval.dot"} <= written
    assert "stage" in (tmp_path / "Nested.eval.dot").read_text()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_render_svg_with_shapes(capsys, tmp_path):
    argv = ["render", NESTED, "--mode", "eval", *SMALL, "-o", str(tmp_path), "--name", "n"]
    assert main(argv) == 0
    svg = tmp_path / "n.eval.svg"
    assert f"wrote {svg}" in capsys.readouterr().out
    assert svg.read_text().lstrip().startswith(("<?xml", "<svg"))


@NOISE
def test_bench_prints_the_table_and_writes_reports(capsys, tmp_path):
    report = tmp_path / "cost.json"
    argv = ["bench", NESTED, "--nodes", "stage.blocks.0", *SMALL, "--rounds", "2"]
    argv += ["--min-run-time", "0.01", "--json", str(report), "--csv", str(tmp_path / "c.csv")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "extractor" in out and "hooks" in out and f"wrote {report}" in out
    data = json.loads(report.read_text())
    assert data and (tmp_path / "c.csv").read_text().count("\n") > 3


@NOISE
def test_demo_function_writes_every_file(tmp_path):
    import io

    stream = io.StringIO()
    result = run(
        model_spec=NESTED,
        out_dir=tmp_path / "out",
        nodes=["stage.blocks.0", "stage"],
        input="1x3x8x8",
        quick=True,
        stream=stream,
    )
    names = {p.name for p in result.files.values()}
    expected = {"nodes.txt", "nodes.json", "Nested.fxtap", "cost.json", "cost.txt"}
    assert expected <= names
    # Every file written is listed once: "wrote N files" counts what is in the folder.
    out = tmp_path / "out"
    assert {p.relative_to(out).parts[0] for p in result.files.values()} == {
        p.name for p in out.iterdir()
    }
    assert len(result.files) == len(names)
    drawings = {n for n in names if ".train." in n or ".eval." in n}
    assert {n.rsplit(".", 1)[0] for n in drawings} == {"Nested.train", "Nested.eval"}
    assert {n for n in drawings if n.endswith(".dot")} == {"Nested.train.dot", "Nested.eval.dot"}
    assert all(
        (p.is_file() and p.stat().st_size > 0) or (p.is_dir() and any(p.iterdir()))
        for p in result.files.values()
    )
    assert "stage.blocks.0.add" in (tmp_path / "out" / "nodes.txt").read_text()
    assert load(tmp_path / "out" / "Nested.fxtap").outputs["eval"]["stage"] == "stage.relu"
    assert "[6/6]" in stream.getvalue()
    summary = result.summary()
    assert summary.startswith(f"fxtap demo wrote {len(result.files)} files to")
    assert all(str(p) in summary for p in result.files.values())


@NOISE
def test_demo_subcommand(capsys, tmp_path):
    argv = ["demo", "--model", NESTED, "--nodes", "stage", "--input", "1x3x8x8", "--quick"]
    assert main([*argv, "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fxtap demo wrote" in out and str(tmp_path / "nodes.txt") in out


def test_every_option_states_its_default():
    import argparse

    from fxtap.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in [("fxtap", parser), *subparsers.choices.items()]:
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert "(default: " in (action.help or ""), f"{name} {action.dest}: {action.help!r}"


def test_debug_before_the_subcommand(capsys):
    assert main(["--debug", "nodes", "torchvision:resnet81"]) == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")
def test_timm_spec(capsys):
    assert main(["nodes", "timm:resnet18", "--input", "1x3x32x32"]) == 0
    fc = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fc "))
    assert fc.split()[-2:] == ["1x1000", "float32"]
    assert main(["nodes", "timm:resnet_18"]) == 1
    assert "timm has no model 'resnet_18'" in one_error_line(capsys)


# --- messages a command-line user can act on -------------------------------------------------

FACTORIES = """
import sys

import torchvision
from torch import nn


def exits():
    sys.exit(0)


def breaks(width=4):
    return nn.Linear(width, "four")  # a TypeError inside the body, not in the call


def tiny_vit():
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=8
    )


def fixed_size():
    # Fits 1x3x32x32 only: the Linear expects 4 channels of 8x8 after the pooling.
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(4 * 8 * 8, 2)
    )
"""


@pytest.fixture
def factories(tmp_path: Path) -> str:
    path = tmp_path / "factories.py"
    path.write_text(FACTORIES)
    return str(path)


def test_help_does_not_import_torch():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys; from fxtap.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'torchvision', 'fxtap.extractor') if m in sys.modules))"
    )
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "fxtap", "--help"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0 and "SUBCOMMAND" in done.stdout


def test_ctrl_c_while_importing_prints_no_traceback(capsys, monkeypatch):
    """Ctrl-C while torch and the stages load (after parsing) ends with one line, exit 130."""
    import sys

    class Interrupt:
        def find_spec(self, name, path=None, target=None):
            if name == "fxtap.cli._output":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "fxtap.cli._output", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupt(), *sys.meta_path])
    assert main(["nodes", NESTED]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "fxtap: interrupted" and "Traceback" not in err


def test_ctrl_c_during_render_leaves_no_half_sets(capsys, tmp_path, monkeypatch):
    import importlib

    render_module = importlib.import_module("fxtap.render")  # fxtap.render is the function

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(render_module, "find_dot", lambda dot, written: "dot")
    monkeypatch.setattr(render_module, "layout", interrupted)
    keep = tmp_path / "notes.dot"
    keep.write_text("not ours")
    assert main(["render", NESTED, "-o", str(tmp_path)]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.dot"]
    # a drawing's name written in place by someone else while fxtap ran is theirs: it stays
    theirs = tmp_path / "Other.eval.dot"

    def written_in_place(*args, **kwargs):
        theirs.write_text("their drawing")
        raise KeyboardInterrupt

    monkeypatch.setattr(render_module, "layout", written_in_place)
    theirs.write_text("")
    assert main(["render", NESTED, "-o", str(tmp_path)]) == 130
    assert theirs.read_text() == "their drawing"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Other.eval.dot", "notes.dot"]
    assert "interrupted" in capsys.readouterr().err


def test_bench_noise_warning_names_the_flags(capsys):
    from types import SimpleNamespace

    from fxtap.cli._output import show_warning
    from fxtap.cost import _noise_messages

    noisy = SimpleNamespace(name="full", iqr=0.5, median=1.0, samples=(1.0, 1.5, 0.9, 1.6))
    messages = _noise_messages(SimpleNamespace(variants=[noisy]), 0.1)
    assert "rounds=" in messages[0]  # Python callers read the argument names
    show_warning(messages[0], UserWarning, "x.py", 1)
    line = capsys.readouterr().err
    for flag in ("--rounds", "--min-run-time", "--threads"):
        assert flag in line, line
    assert "rounds=" not in line and "min_run_time=" not in line


def test_render_of_a_saved_extractor_draws_what_it_kept(capsys, tmp_path):
    """A saved file holds only the kept graphs: those are drawn (the model draws the rest)."""
    path = tmp_path / "nested.fxtap"
    assert main(["extract", NESTED, "--nodes", "stage", *SMALL, "-o", str(path)]) == 0
    capsys.readouterr()
    assert main(["render", str(path), "--format", "dot", "-o", str(tmp_path)]) == 0
    kept = load(path).node_names("eval")
    (dot,) = tmp_path.glob("*.eval.dot")
    text = dot.read_text(encoding="utf-8")
    # Repeated blocks may be folded; the input, the stem and the tapped output are drawn.
    assert all(f'id="{name}"' in text for name in (kept[0], "stem", kept[-1]))
    import fxtap
    from support.models import Nested

    pruned = set(fxtap.get_graph_node_names(Nested())[1]) - set(kept)
    assert pruned and not any(f'id="{name}"' in text for name in pruned)


def test_video_model_without_input_suggests_a_clip(capsys, tmp_path):
    argv = ["extract", "torchvision:r3d_18", "--nodes", "layer4", "-o", str(tmp_path / "x.fxtap")]
    assert main(argv) == 1
    line = one_error_line(capsys)
    assert "--input 1x3x224x224 does not fit" in line
    assert "e.g. --input 1x3x16x112x112" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("factory", "given", "suggested"),
    [
        ("tiny_vit", "1x3x48x48", "1x3x32x32"),  # the ViT's size assert, traced with a Proxy
        ("fixed_size", "1x3x16x16", "1x3x32x32"),  # mat1 and mat2 shapes cannot be multiplied
        ("fixed_size", "1x3x224x224", "1x3x32x32"),  # never the rejected input again
    ],
)
def test_input_that_does_not_fit_names_input_and_a_shape_that_fits(
    capsys, tmp_path, factories, factory, given, suggested
):
    spec = f"{factories}:{factory}"
    node = "encoder" if factory == "tiny_vit" else "3"  # the Linear that needs the size
    for argv in (
        ["extract", spec, "--nodes", node, "--input", given, "-o", str(tmp_path / "x.fxtap")],
        ["nodes", spec, "--input", given],
    ):
        assert main(argv) == 1
        line = one_error_line(capsys)
        assert f"e.g. --input {suggested}" in line, line
        assert f"e.g. --input {given}" not in line
        assert "Proxy(" not in line and "--debug" not in line
    assert main(["nodes", spec, "--input", suggested]) == 0


@pytest.mark.parametrize(
    ("typed", "meant"), [("Stem", "stem"), ("Stage.Blocks.0", "stage.blocks.0")]
)
def test_close_matches_ignore_case(capsys, tmp_path, typed, meant):
    argv = ["extract", NESTED, "--nodes", typed, *SMALL, "-o", str(tmp_path / "x.fxtap")]
    assert main(argv) == 1
    assert f"closest: {meant!r}" in one_error_line(capsys)


def test_factory_that_exits_is_an_error(capsys, factories):
    assert main(["nodes", f"{factories}:exits"]) == 1
    line = one_error_line(capsys)
    assert "sys.exit(0)" in line and "return an nn.Module" in line


def test_type_error_inside_a_factory_is_reported_as_such(capsys, factories):
    assert main(["nodes", f"{factories}:breaks"]) == 1
    line = one_error_line(capsys)
    assert "failed while building the model: TypeError" in line
    assert "rejected its arguments" not in line
    assert main(["nodes", f"{factories}:breaks", "--model-arg", "depth=2"]) == 1
    assert "rejected its arguments {'depth': 2}" in one_error_line(capsys)


@pytest.mark.parametrize(
    "argv",
    [
        ["nodes", "torchvision:resnet18", "--model-arg", "weights=DEFAULT"],
        ["nodes", "torchvision:fasterrcnn_resnet50_fpn", "--model-arg", "weights_backbone=DEFAULT"],
        ["nodes", "timm:resnet18", "--model-arg", "pretrained=True"],
    ],
)
def test_pretrained_weights_need_allow_download(capsys, argv, monkeypatch):
    import torch.hub

    def no_network(*args, **kwargs):
        raise AssertionError("a download was started")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    assert main(argv) == 1
    line = one_error_line(capsys)
    assert "--allow-download" in line and "downloads pretrained weights" in line


def test_outputs_are_never_fifos_or_devices(capsys, tmp_path):
    import os
    import stat

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    runs = [
        ["extract", NESTED, "--nodes", "stage", *SMALL, "-o", str(fifo)],
        ["nodes", NESTED, "--json", str(fifo)],
        ["extract", NESTED, "--nodes", "stage", *SMALL, "-o", os.devnull],
    ]
    for argv in runs:
        assert main(argv) == 2  # bad usage, refused before any work
        line = one_error_line(capsys)
        assert "not a regular file" in line and ("FIFO" in line or "device node" in line)
    out = tmp_path / "drawings"
    out.mkdir()
    os.mkfifo(out / "Nested.eval.dot")
    assert main(["render", NESTED, "--format", "dot", "--mode", "eval", "-o", str(out)]) == 2
    assert "FIFO" in one_error_line(capsys)
    demo = tmp_path / "demo"
    demo.mkdir()
    os.mkfifo(demo / "nodes.txt")
    assert main(["demo", "--model", NESTED, "--nodes", "stage", "-o", str(demo)]) == 2
    assert "FIFO" in one_error_line(capsys)
    assert stat.S_ISFIFO(fifo.stat().st_mode) and stat.S_ISFIFO((demo / "nodes.txt").stat().st_mode)
    assert sorted(p.name for p in demo.iterdir()) == ["nodes.txt"]


def _bench_argv(flag: str, path: str) -> list[str]:
    return ["bench", NESTED, "--nodes", "stage", *SMALL, "--rounds", "1", flag, path]


#: Each command with a file output, as argv for an output path.
_FILE_OUTPUTS = {
    "extract -o": lambda p: ["extract", NESTED, "--nodes", "stage", *SMALL, "-o", p],
    "extract --format pickle -o": lambda p: [
        "extract", NESTED, "--nodes", "stage", *SMALL, "--format", "pickle", "-o", p,
    ],
    "nodes --json": lambda p: ["nodes", NESTED, "--json", p],
    "bench --json": lambda p: _bench_argv("--json", p),
    "bench --csv": lambda p: _bench_argv("--csv", p),
    "bench --plot": lambda p: _bench_argv("--plot", p),
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(_FILE_OUTPUTS))
def test_output_at_a_symlink_leaves_the_link_and_its_target_untouched(capsys, tmp_path, command):
    import os

    target = tmp_path / "precious.txt"
    target.write_text("not fxtap's", encoding="utf-8")
    link = tmp_path / "link.out"
    link.symlink_to(target)
    dangling = tmp_path / "dangling.out"
    dangling.symlink_to(tmp_path / "nowhere.txt")
    for path in (link, dangling):
        assert main(_FILE_OUTPUTS[command](str(path))) == 2
        line = one_error_line(capsys)
        assert "symbolic link" in line and str(path) in line and "never replaces a link" in line
        assert path.is_symlink()
    assert os.readlink(link) == str(target) and target.read_text(encoding="utf-8") == "not fxtap's"
    assert not (tmp_path / "nowhere.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dangling.out",
        "link.out",
        "precious.txt",
    ]


@pytest.mark.parametrize("command", ["extract -o", "nodes --json", "bench --plot"])
def test_output_at_a_fifo_or_a_directory_is_refused_before_any_work(capsys, tmp_path, command):
    import os

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "kept.txt").write_text("x", encoding="utf-8")
    for path, kind in ((fifo, "a FIFO"), (folder, "a directory")):
        assert main(_FILE_OUTPUTS[command](str(path))) == 2
        captured = capsys.readouterr()
        assert captured.out == ""  # nothing ran: no table, no report
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and f"it is {kind}" in lines[0], lines
    assert fifo.is_fifo() and [p.name for p in folder.iterdir()] == ["kept.txt"]


def test_render_refuses_links_among_its_drawings_and_a_file_as_its_folder(capsys, tmp_path):
    out = tmp_path / "drawings"
    out.mkdir()
    target = tmp_path / "precious.svg"
    target.write_text("<svg/>", encoding="utf-8")
    (out / "Nested.eval.dot").symlink_to(target)
    argv = ["render", NESTED, "--format", "dot", "--mode", "eval", "-o", str(out)]
    assert main(argv) == 2
    assert "symbolic link" in one_error_line(capsys)
    assert (out / "Nested.eval.dot").is_symlink() and target.read_text() == "<svg/>"
    assert main(["render", NESTED, "--format", "dot", "-o", str(target)]) == 2
    assert "it is not a folder" in one_error_line(capsys)
    assert target.read_text() == "<svg/>"
    linked = tmp_path / "linked"
    linked.symlink_to(out, target_is_directory=True)  # a link to a folder is a folder
    (out / "Nested.eval.dot").unlink()
    assert main(["render", NESTED, "--format", "dot", "--mode", "eval", "-o", str(linked)]) == 0
    assert (out / "Nested.eval.dot").is_file()


def test_input_help_matches_what_each_command_does(capsys):
    from fxtap.cli import build_parser

    parser = build_parser()
    helps = {}
    for command in ("nodes", "render", "extract", "bench"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        helps[command] = " ".join(capsys.readouterr().out.split())
    for command in ("nodes", "render"):
        assert "(default: none: no shapes are shown)" in helps[command]
    for command in ("extract", "bench"):
        assert "repeat for models with several inputs (default: 1x3x224x224)" in helps[command]
    # And the behaviour: no --input, no shape column.
    assert main(["nodes", NESTED]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[-1] == "params"


def test_check_trace_default_agrees_with_the_docs():
    from fxtap.cli import build_parser

    root = Path(__file__).resolve().parents[1]
    args = build_parser().parse_args(["extract", NESTED, "--nodes", "stage", "-o", "x.fxtap"])
    assert args.check_trace is False
    text = " ".join((root / "docs" / "tracing.md").read_text().split())
    assert "always runs this check" not in text
    assert "`fxtap extract --check-trace` runs this check" in text and "off by default" in text


def test_package_names_load_lazily_and_stay_functions():
    import types

    import fxtap
    import fxtap.save

    assert isinstance(fxtap.save, types.FunctionType) and fxtap.save.__module__ == "fxtap.save"
    assert callable(fxtap.render) and callable(fxtap.trace)
    assert set(fxtap.__all__) <= set(dir(fxtap))
    assert all(getattr(fxtap, name) is not None for name in fxtap.__all__)
