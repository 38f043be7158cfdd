"""Tests of exporting once for both modes (fxtap.trace._export_modes, _flag_reads).

A model whose code reads no ``training`` flag while it is exported (or reads it only where
both modes do the same) is exported once; every other model once per mode. Either way the
extractor is bitwise equal to forward hooks on the unmodified model in both modes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

import fxtap
from fxtap import FeatureExtractor
from fxtap.trace._export_modes import read_flags
from support.checker import Hooks, bitwise_equal
from support.hf import HF, build_hf, hf_reference


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The mode (``'train'``/``'eval'``) of each ``torch.export.export`` call."""
    calls: list[str] = []
    export = torch.export.export

    def counted(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        # NOTE: read from __dict__: a read of ``model.training`` here would count as the
        # model's own (the export reads every flag read while it runs)
        calls.append("train" if model.__dict__["training"] else "eval")
        return export(model, *args, **kwargs)

    monkeypatch.setattr(torch.export, "export", counted)
    yield calls


class Block(nn.Module):
    """Linear, LayerNorm, GELU and a dropout of rate ``p``; ``drop`` picks how it reads the flag."""

    def __init__(self, p: float = 0.0, drop: str = "module") -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)
        self.dropout = nn.Dropout(p)
        self.p, self.drop, self.layerdrop = p, drop, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.gelu(self.norm(self.fc(x)))
        if self.drop == "module":
            h = self.dropout(h)
        elif self.drop == "functional":  # transformers' hidden dropout
            h = nn.functional.dropout(h, p=self.p, training=self.training)
        elif self.drop == "rate":  # transformers' attention dropout argument
            h = nn.functional.dropout(h, 0.0 if not self.training else self.p)
        elif self.drop == "branch" and self.training:
            h = h * 2
        if self.training and self.layerdrop > 0.0:  # LayerDrop, off
            h = h * 0
        return x + h


class Net(nn.Module):
    def __init__(self, p: float = 0.0, drop: str = "module") -> None:
        super().__init__()
        self.blocks = nn.Sequential(Block(p, drop), Block(p, drop))
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


X = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(0))
TAPS = {"blocks.0.norm": "leaf", "blocks.1.add": "func", "head": "head"}


def _check_both_modes(ex: Any, model: nn.Module, x: torch.Tensor) -> None:
    for training in (False, True):
        model.train(training)
        hooks = Hooks(model, {"leaf": "blocks.0.norm", "head": "head"}, {"func": "head"})
        torch.manual_seed(0)
        with torch.no_grad():
            model(x)
        hooks.remove()
        torch.manual_seed(0)
        with torch.no_grad():
            got = ex.train(training)(x)
        for key, want in hooks.values.items():
            assert bitwise_equal(got[key], want), (training, key)


@pytest.mark.parametrize("drop", ["module", "functional", "rate"])
def test_a_model_whose_modes_run_the_same_code_is_exported_once(
    exports: list[str], drop: str
) -> None:
    model = Net(p=0.0, drop=drop).eval()
    ex = fxtap.create_feature_extractor(model, TAPS, tracer="export", example_inputs=X)
    assert len(exports) == 1
    assert not model.training and not model.blocks[0].dropout.training
    assert "training" not in nn.Module.__dict__, "the flag descriptor was left on nn.Module"
    for x in (X, X[:2, :3]):
        _check_both_modes(ex, model, x)


@pytest.mark.parametrize("drop", ["module", "functional", "rate", "branch"])
def test_a_model_whose_modes_differ_is_exported_per_mode(exports: list[str], drop: str) -> None:
    model = Net(p=0.5, drop=drop).eval()
    ex = fxtap.create_feature_extractor(model, TAPS, tracer="export", example_inputs=X)
    assert sorted(exports) == ["eval", "train"]
    _check_both_modes(ex, model, X)
    torch.manual_seed(0)
    train = ex.train(True)(X)["head"]
    assert not torch.equal(train, ex.train(False)(X)["head"]), "train mode lost its dropout"


def test_layerdrop_that_is_on_is_a_mode_difference(exports: list[str]) -> None:
    model = Net().eval()
    model.blocks[1].layerdrop = 0.5
    ex = fxtap.create_feature_extractor(model, TAPS, tracer="export", example_inputs=X)
    assert len(exports) == 2
    _check_both_modes(ex, model, X)


class Switch(Net):
    """A ``train()`` that changes more than the flags: the modes differ outside the flags."""

    def train(self, mode: bool = True) -> Switch:
        super().train(mode)
        self.scale = 2.0 if mode else 1.0
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


def test_a_train_method_with_side_effects_is_exported_per_mode(exports: list[str]) -> None:
    model = Switch().eval()
    ex = fxtap.create_feature_extractor(model, [":output"], tracer="export", example_inputs=X)
    assert len(exports) == 2
    with torch.no_grad():
        assert bitwise_equal(ex.train(False)(X)[":output"], model.eval()(X))
        assert bitwise_equal(ex.train(True)(X)[":output"], model.train()(X))


def test_reads_outside_the_export_are_not_recorded_and_flags_are_kept() -> None:
    model = Net(p=0.5)
    model.blocks[0].train(False)
    with read_flags(model) as flags:
        model.blocks[1](X)
        model.blocks[0].training = True
    assert [r.partition(" ")[0] for r in flags.reads] == ["blocks.1.dropout"]
    assert model.blocks[0].training and model.blocks[1].training
    assert "training" not in nn.Module.__dict__
    with read_flags(model, record=False) as unknown:
        pass
    assert not unknown.mode_independent


@pytest.mark.hf
def test_llama_is_exported_once_and_bert_with_dropout_twice(exports: list[str]) -> None:
    for arch, count in (("llama", 1), ("bert", 2)):
        exports.clear()
        model, inputs = build_hf(arch)
        leaf, func, _, _ = HF[arch]
        ex = fxtap.create_feature_extractor(model.eval(), {leaf: "leaf", func: "func"})
        assert isinstance(ex, FeatureExtractor) and len(exports) == count, arch
        for training in (False, True):
            model.train(training)
            with torch.no_grad():
                ref, _ = hf_reference(model, inputs, HF[arch])
                torch.manual_seed(0)
                got = ex.train(training)(**inputs)
            for key in ("leaf", "func"):
                assert bitwise_equal(got[key], ref[key]), (arch, training, key)
