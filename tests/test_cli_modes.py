"""The command line's extractors are for inference: built, saved and described in eval mode."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch import nn

import fxtap
from fxtap.cli import main
from fxtap.cli._words import cli_words


def _batchnorm_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": buf.clone()
        for name, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for key, buf in m.named_buffers(recurse=False)
    }


def test_extract_saves_in_eval_mode_and_a_plain_call_keeps_batchnorm_buffers(capsys, tmp_path):
    path = tmp_path / "r.fxtap"
    argv = ["extract", "torchvision:resnet18", "--nodes", "layer2", "--input", "1x3x32x32"]
    assert main([*argv, "-o", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ResNet extractor in eval mode, 1 output(s):" in out
    assert out.rstrip().endswith("format fxtap, eval mode)")
    loaded = fxtap.load(path)
    assert loaded.training is False
    assert not any(m.training for m in loaded.modules())
    before = _batchnorm_buffers(loaded)
    assert before, "resnet18 keeps BatchNorm layers up to layer2"
    with torch.no_grad():
        first = loaded(torch.rand(2, 3, 32, 32))["layer2"]
        again = loaded(torch.rand(2, 3, 32, 32))
    after = _batchnorm_buffers(loaded)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), f"{key} changed in a plain call"
    assert first.shape == again["layer2"].shape == (2, 128, 4, 4)


def test_extract_train_saves_in_train_mode(capsys, tmp_path):
    path = tmp_path / "nested.fxtap"
    argv = ["extract", "tests/support/models.py:Nested", "--nodes", "stage", "--input", "1x3x8x8"]
    assert main([*argv, "--train", "-o", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Nested extractor in train mode, 1 output(s):" in out
    assert "train mode)" in out
    loaded = fxtap.load(path)
    assert loaded.training is True
    before = _batchnorm_buffers(loaded)
    loaded(torch.rand(2, 3, 8, 8))
    after = _batchnorm_buffers(loaded)
    assert any(not torch.equal(before[k], after[k]) for k in before), "train mode updates stats"


# --- messages in the words of the command line -------------------------------------------------


def _error_line(capsys) -> str:
    err = [
        e
        for e in capsys.readouterr().err.strip().splitlines()
        if not e.endswith(" ...") and " done in " not in e
    ]
    errors = [e for e in err if e.startswith("fxtap: error: ")]
    assert len(errors) == 1, err
    return errors[0]


def test_a_train_only_node_asked_in_eval_suggests_the_per_mode_options(capsys, tmp_path):
    path = tmp_path / "g.fxtap"
    model = ["torchvision:googlenet", "--model-arg", "aux_logits=True"]
    model += ["--model-arg", "init_weights=False"]
    small = ["--input", "1x3x64x64", "-o", str(path)]
    assert main(["extract", *model, "--nodes", "aux1.fc2", *small]) == 1
    line = _error_line(capsys)
    assert "'aux1.fc2' not found in the eval graph of GoogLeNet, but the train graph has it" in line
    assert "--train-nodes aux1.fc2" in line and "--eval-nodes" in line
    assert "return_nodes" not in line and "closest: (none)" not in line
    argv = ["extract", *model, "--train-nodes", "aux1.fc2", "--eval-nodes", "inception5b", *small]
    assert main(argv) == 0
    loaded = fxtap.load(path)
    assert loaded.outputs == {
        "train": {"aux1.fc2": "aux1.fc2"},
        "eval": {"inception5b": "inception5b.cat"},
    }


def test_per_mode_options_need_each_other_and_not_nodes(capsys, tmp_path):
    base = [
        "extract",
        "tests/support/models.py:Nested",
        "--input",
        "1x3x8x8",
        "-o",
        str(tmp_path / "x"),
    ]
    assert main([*base, "--train-nodes", "stage"]) == 1
    assert "only --train-nodes was given; pass --eval-nodes too" in _error_line(capsys)
    assert main([*base, "--nodes", "stage", "--eval-nodes", "stem"]) == 1
    assert "--nodes was given together with --train-nodes/--eval-nodes" in _error_line(capsys)
    assert main([*base, "--nodes", "stage", "--train-nodes", "stem"]) == 2  # argparse: exclusive


def test_render_takes_the_taps_of_each_mode_as_extract_does(capsys, tmp_path):
    base = ["render", "tests/support/models.py:Nested", "--format", "dot", "-o", str(tmp_path)]
    assert main([*base, "--train-nodes", "stage"]) == 1
    assert "only --train-nodes was given; pass --eval-nodes too" in _error_line(capsys)
    assert main([*base, "--nodes", "stage", "--train-nodes", "stem"]) == 2  # argparse: exclusive
    capsys.readouterr()
    assert main([*base, "--train-nodes", "stage", "--eval-nodes", "stem"]) == 0
    train = (tmp_path / "Nested.train.dot").read_text()
    evaluated = (tmp_path / "Nested.eval.dot").read_text()
    # train taps stage (it keeps stem and stage), eval taps stem only: it prunes stage too
    assert train.count('class="pruned"') < evaluated.count('class="pruned"')


def test_a_branch_not_taken_is_not_blamed_on_the_input_shape(capsys, tmp_path):
    argv = [
        "extract",
        "tests/support/models.py:SkippedBranch",
        "--nodes",
        "a",
        "b",
        "--input",
        "1x4",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the capture path's own warning
        assert main([*argv, "-o", str(tmp_path / "x.fxtap")]) == 1
    line = _error_line(capsys)
    assert "was not reached" in line and "a branch of the model's code skipped it" in line
    assert "--input with the shape" not in line and "does not fit" not in line


def test_warnings_of_other_packages_are_not_fxtaps(capsys, tmp_path):
    argv = ["nodes", "torchvision:googlenet"]  # torchvision warns about init_weights
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(argv) == 0
    err = capsys.readouterr().err
    assert "fxtap: torchvision warns: FutureWarning: The default weight initialization" in err
    assert "fxtap: warning: The default weight" not in err


def test_fxtap_warnings_use_the_flags_of_the_command_line(capsys, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        argv = [
            "extract",
            "tests/support/models.py:DataDependent",
            "--nodes",
            "gate",
            "--input",
            "1x4",
        ]
        assert main([*argv, "-o", str(tmp_path / "x.fxtap")]) == 0
    err = capsys.readouterr().err
    assert "fxtap: warning: torch.fx could not trace all of DataDependent" in err
    assert "Pass --no-auto-leaf to get the TraceError" in err
    assert "auto_leaf" not in err


def test_no_auto_leaf_gives_the_trace_error(capsys, tmp_path):
    argv = ["extract", "tests/support/models.py:DataDependent", "--nodes", "gate", "--input", "1x4"]
    assert main([*argv, "--no-auto-leaf", "-o", str(tmp_path / "x.fxtap")]) == 1
    line = _error_line(capsys)
    assert "torch.fx could not trace DataDependent" in line and "'gate'" in line


@pytest.mark.parametrize(
    ("python", "cli"),
    [
        ("or pass fmt='dot' to write DOT text only", "or pass --format dot to write DOT text only"),
        (
            "example_inputs is None; pass example_inputs=(tensor, ...) or a dict of keyword "
            "inputs such as example_inputs={'input_ids': ids} (on the command line: --input)",
            "example_inputs is None; pass --input SHAPE or a dict of keyword inputs such as "
            "--input SHAPE",
        ),
        (
            "pass example_inputs= (--input SHAPE on the command line), e.g. "
            "example_inputs=torch.rand(1, 3, 224, 224)",
            "pass --input, e.g. --input SHAPE",
        ),
        (
            "Pass auto_leaf=False to get the TraceError.",
            "Pass --no-auto-leaf to get the TraceError.",
        ),
        (
            "Pass the same arguments to resume it, resume=False (--restart) to erase it",
            "Pass the same arguments to resume it, --restart to erase it",
        ),
        (
            "Ask for it in that mode alone: train_return_nodes=['aux1.fc2'] together with "
            "eval_return_nodes= for the eval outputs (return_nodes= asks both modes)",
            "Ask for it in that mode alone: --train-nodes aux1.fc2 together with --eval-nodes "
            "for the eval outputs (--nodes asks both modes)",
        ),
        ("Use more rounds=, or device='cpu'.", "Use more --rounds, or --device cpu."),
        ("node 'x=1' is fine; 'fmt' alone stays", "node 'x=1' is fine; 'fmt' alone stays"),
    ],
)
def test_cli_words(python, cli):
    assert cli_words(python) == cli


def test_bench_plot_without_matplotlib_fails_before_measuring(capsys, tmp_path, monkeypatch):
    import fxtap.cost

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(fxtap.cost, "compare", lambda *a, **k: pytest.fail("benchmark ran"))
    argv = ["bench", "tests/support/models.py:Nested", "--nodes", "stage", "--input", "1x3x8x8"]
    assert main([*argv, "--plot", str(tmp_path / "p.png")]) == 1
    line = _error_line(capsys)
    assert "needs 'matplotlib'" in line and "pip install 'fxtap[plot]'" in line
