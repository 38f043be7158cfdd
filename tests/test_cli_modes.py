"""The command line's extractors are for inference: built, saved and described in eval mode."""

from __future__ import annotations

import torch
from torch import nn

import fxtap
from fxtap.cli import main


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
    argv = ["extract", "tests/models.py:Nested", "--nodes", "stage", "--input", "1x3x8x8"]
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
