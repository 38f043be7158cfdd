"""Root arguments that default to ``None`` (fxtap/_fixed_to_none.py, fxtap/trace/_none_defaults.py).

torch.fx traces ``if state is None`` on a placeholder as ``False``: its graph serves calls that
pass ``state`` (torchvision's extractor serves those alone) and fails on calls that leave it
out. The extractor keeps a second graph traced with ``state`` fixed to ``None`` and picks one
per call; every call equals forward hooks on the unmodified model bitwise, in both modes, with
gradients.
"""

from __future__ import annotations

import copy
import json
import pickle
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import fxtap
from fxtap import FeatureExtractor, InvalidArgumentError, LoadError
from support.checker import Hooks, bitwise_equal
from support.models import OptionalState

X = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
STATE = (torch.randn(4, generator=torch.Generator().manual_seed(1)),)
TAPS = {"fc": "leaf", "add": "func", ":output": "out"}


def _calls(state: Any) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Every way to pass ``state`` (``None`` included): positionally, by keyword, or not."""
    if state is None:
        return [((X,), {}), ((X, None), {}), ((X,), {"state": None}), ((), {"x": X})]
    return [((X, state), {}), ((X,), {"state": state}), ((), {"x": X, "state": state})]


def _reference(model: nn.Module, state: Any) -> dict[str, Any]:
    hooks = Hooks(model, {"leaf": "fc"}, {"func": "norm"})
    torch.manual_seed(0)
    out = model(X) if state is None else model(X, state)
    hooks.remove()
    return {**hooks.values, "out": out}


def _grads(model: nn.Module, value: torch.Tensor) -> list[Any]:
    params = list(model.parameters())
    return list(torch.autograd.grad(value.sum(), params, retain_graph=True, allow_unused=True))


def _build(model: nn.Module, **kwargs: Any) -> FeatureExtractor:
    ex = fxtap.create_feature_extractor(model, TAPS, **kwargs)
    assert isinstance(ex, FeatureExtractor)
    return ex


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("state", [None, STATE], ids=["without_state", "with_state"])
def test_every_call_equals_hooks_with_gradients(training: bool, state: Any) -> None:
    model = OptionalState().train(training)
    ex = _build(model)
    assert ex.fixed_to_none == ("state",)
    want = _reference(model, state)
    want_grads = {k: _grads(model, want[k]) for k in TAPS.values()}
    for args, kwargs in _calls(state):
        torch.manual_seed(0)  # the same dropout draw in train mode
        got = ex(*args, **kwargs)
        for key in TAPS.values():
            assert bitwise_equal(got[key], want[key]), (key, args, kwargs)
            # the extractor's parameters are the model's own tensors
            got_grads = _grads(model, got[key])
            assert any(g is not None for g in got_grads), key
            assert [g is None for g in got_grads] == [g is None for g in want_grads[key]], key
            assert all(g is None or bitwise_equal(g, w) for g, w in zip(got_grads, want_grads[key]))


def test_the_graph_that_takes_the_argument_is_torchvisions() -> None:
    tv = pytest.importorskip("torchvision.models.feature_extraction")
    model = OptionalState().eval()
    ex = fxtap.create_feature_extractor(model, {"add": "func"})
    ref = tv.create_feature_extractor(model, {"add": "func"})
    assert [n.op for n in ex.graph_for("eval").nodes] == [n.op for n in ref.graph.nodes]
    # the other graph asserts that the argument is None and reads no placeholder
    fixed = ex.graph_for("eval", fixed_to_none=True)
    (placeholder, x) = fixed.find_nodes(op="placeholder")[::-1]
    assert placeholder.target == "state" and x.target == "x"
    assert all(user.op == "call_function" for user in placeholder.users)
    with pytest.raises(TypeError, match="not subscriptable"):
        ref(X)  # torchvision's extractor fails on a call without the state


def test_copies_pickles_threads_and_saving(tmp_path: Path) -> None:
    model = OptionalState().eval()
    ex = _build(model)
    with torch.no_grad():
        want = {s is None: ex(X, s)["func"] for s in (None, STATE)}
        for other in (copy.deepcopy(ex), pickle.loads(pickle.dumps(ex))):
            assert other.fixed_to_none == ("state",)
            for state in (None, STATE):
                assert bitwise_equal(other.eval()(X, state)["func"], want[state is None])
        with ThreadPoolExecutor(4) as pool:
            runs = list(pool.map(lambda i: (i % 2, ex(X, STATE if i % 2 else None)), range(16)))
    assert all(bitwise_equal(r["func"], want[not odd]) for odd, r in runs)
    # the safe format stores both graphs of each mode
    loaded = fxtap.load(fxtap.save(ex, tmp_path / "ex.fxtap"))
    assert loaded.fixed_to_none == ("state",)
    pickled = fxtap.load(fxtap.save(ex, tmp_path / "ex.pkl", fmt="pickle"), trust=True)
    with torch.no_grad():
        for other in (loaded, pickled):
            assert bitwise_equal(other(X)["func"], want[True])
            assert bitwise_equal(other(X, state=STATE)["func"], want[False])
    # fixed to None by the caller: one graph per mode, which asserts that state is None
    one = _build(model, concrete_args={"state": None})
    assert one.fixed_to_none == ()
    with torch.no_grad():
        assert bitwise_equal(
            fxtap.load(fxtap.save(one, tmp_path / "one.fxtap"))(X)["func"], want[True]
        )


@pytest.mark.parametrize(
    "tamper",
    [
        lambda f: f.update(args=["x_not_an_input"]),
        lambda f: f.update(args=[]),
        lambda f: f.update(args=["__class__"]),
        lambda f: f["graphs"].pop("train"),
        lambda f: f.update(more=1),
    ],
    ids=["not_an_input", "no_args", "not_an_identifier", "a_mode_missing", "unknown_key"],
)
def test_a_tampered_second_graph_is_refused(tmp_path: Path, tamper: Any) -> None:
    path = fxtap.save(_build(OptionalState()), tmp_path / "ex.fxtap")
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(members["fxtap.json"])
    tamper(manifest["fixed_to_none"])
    members["fxtap.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(LoadError, match=r"fixed_to_none"):
        fxtap.load(path)


def test_example_inputs_with_the_argument_check_both_graphs() -> None:
    model = OptionalState().eval()
    ex = _build(model, example_inputs=(X, STATE))
    assert ex.fixed_to_none == ("state",)
    with torch.no_grad():
        for state in (None, STATE):
            assert bitwise_equal(ex(X, state)["out"], _reference(model, state)["out"])


class _Unread(nn.Module):
    """A ``None`` default that the forward never reads."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(x)


def test_no_second_graph_where_the_argument_is_fixed_or_not_read() -> None:
    fixed = _build(OptionalState(), concrete_args={"state": None})
    unread = fxtap.create_feature_extractor(_Unread(), ["fc"])
    for ex in (fixed, unread):
        assert isinstance(ex, FeatureExtractor) and ex.fixed_to_none == ()
        with pytest.raises(InvalidArgumentError, match=r"no graph with arguments fixed to None"):
            ex.graph_for("eval", fixed_to_none=True)
