"""The time budget of torch.export's reasoning on dynamic dimensions (``_export_budget``).

Windowed attention pads height and width to a multiple of the window at every stage, and
torch.export's symbolic reasoning on them grows with each guard: swinv2's tiny config took
130 s to export with ``Dim.AUTO``. Past the budget, the export path exports again with only
the batch dynamic. The tests set the budget to 0 so that the first guards past the limit
stop the export at once; the values are checked bitwise against forward hooks.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxtap
from fxtap import FeatureExtractor, InputShapeError
from fxtap.trace import _export_budget
from fxtap.trace._export_budget import GUARDS, OverBudget, dynamic_budget
from support.checker import bitwise_equal


class Windows(nn.Module):
    """Swin's pattern: pad height and width to a multiple of the window, attend within each
    window, cut back, merge 2 by 2 (one stage: some 30 guards on height and width)."""

    def __init__(self, window: int = 2, dim: int = 4) -> None:
        super().__init__()
        self.window = window
        self.embed = nn.Conv2d(3, dim, 2, 2)
        self.attend = nn.Linear(dim, dim)
        self.merge = nn.Conv2d(dim, dim, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        win = self.window
        b, c, h, w = x.shape
        x = F.pad(x, (0, -w % win, 0, -h % win))
        hp, wp = x.shape[2], x.shape[3]
        x = x.view(b, c, hp // win, win, wp // win, win).permute(0, 2, 4, 3, 5, 1)
        x = x.reshape(-1, win * win, c)
        x = torch.softmax(self.attend(x) @ x.transpose(1, 2), -1) @ x
        x = x.view(b, hp // win, wp // win, win, win, c).permute(0, 5, 1, 3, 2, 4)
        x = x.reshape(b, c, hp, wp)[:, :, :h, :w]
        return self.merge(F.pad(x, (0, w % 2, 0, h % 2)))


class Tokens(nn.Module):
    """A text model's shapes: (batch, length, width); its dims hold a guard or two."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.mix = nn.Linear(8, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        return torch.softmax(self.mix(h) @ h.transpose(1, 2), -1) @ h


def _hooked(model: nn.Module, x: torch.Tensor, leaf: str) -> torch.Tensor:
    got: list[torch.Tensor] = []
    handle = model.get_submodule(leaf).register_forward_hook(lambda m, a, o: got.append(o))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return got[0]


def test_a_dimension_past_the_budget_stops_the_export() -> None:
    model = Windows().eval()
    x = torch.rand(2, 3, 30, 26)
    A = torch.export.Dim.AUTO
    with pytest.raises(OverBudget, match=rf"over 0 s, {GUARDS + 1} guards"), dynamic_budget(0):
        torch.export.export(model, (x,), dynamic_shapes=({0: A, 2: A, 3: A},), strict=False)


def test_past_the_budget_only_the_batch_stays_dynamic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_export_budget, "DYNAMIC_BUDGET_S", 0.0)
    model = Windows().eval()
    ex = fxtap.create_feature_extractor(
        model, ["attend", "merge"], tracer="export", example_inputs=torch.rand(2, 3, 30, 26)
    )
    assert isinstance(ex, FeatureExtractor)
    for mode in ("eval", "train"):
        model.train(mode == "train")
        ex.train(mode == "train")
        x = torch.rand(3, 3, 30, 26)  # another batch size
        with torch.no_grad():
            got = ex(x)
        assert bitwise_equal(got["attend"], _hooked(model, x, "attend"))
        assert bitwise_equal(got["merge"], _hooked(model, x, "merge"))
    with pytest.raises(InputShapeError, match=r"size 20 in dim 2, .* ran past its time budget"):
        ex(torch.rand(2, 3, 20, 26))


def test_dimensions_with_few_guards_stay_dynamic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_export_budget, "DYNAMIC_BUDGET_S", 0.0)
    model = Tokens().eval()
    ex = fxtap.create_feature_extractor(
        model, ["mix"], tracer="export", example_inputs=torch.randint(0, 50, (2, 12))
    )
    for shape in ((3, 7), (2, 20)):
        x = torch.randint(0, 50, shape)
        assert bitwise_equal(ex(x)["mix"], _hooked(model, x, "mix"))


class DroppedWindows(Windows):
    """``Windows`` with dropout: each mode is exported on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(super().forward(x))


def test_the_other_mode_does_not_spend_the_budget_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_export_budget, "DYNAMIC_BUDGET_S", 0.0)
    exported = []
    export = torch.export.export

    def counted(*args: Any, **kwargs: Any) -> Any:
        exported.append(kwargs["dynamic_shapes"])
        return export(*args, **kwargs)

    monkeypatch.setattr(torch.export, "export", counted)
    model = DroppedWindows().eval()
    ex = fxtap.create_feature_extractor(
        model, ["merge"], tracer="export", example_inputs=torch.rand(2, 3, 30, 26)
    )
    # all dims in the first mode (stopped), then the batch only in each mode
    assert len(exported) == 3
    assert [list(s["x"]) for s in exported] == [[0, 1, 2, 3], [0], [0]]
    x = torch.rand(3, 3, 30, 26)
    with torch.no_grad():
        assert bitwise_equal(ex.eval()(x)["merge"], _hooked(model, x, "merge"))
