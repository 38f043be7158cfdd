"""Safe save of export-path extractors (fxtap.save._ops): ATen ops and output structures.

Each extractor is saved in the default ``.fxtap`` format and loaded without ``trust``; the
loaded one must return bitwise the original's values in eval mode and in train mode (same seed),
keep its ``ModelOutput`` type, accept other batch sizes and refuse the ones the original
refuses, update its buffers as the original does and give the same gradients. Hostile
manifests (unknown ops, op names with dots or brackets, ops outside the allowlist, output types
outside it) are refused with ``LoadError``. Hugging Face models are tiny configs (marked ``hf``).
"""

from __future__ import annotations

import copy
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn
from torch.utils import _pytree as pytree

import fxtap
from fxtap import FeatureExtractor, InputShapeError, LoadError
from fxtap.save import MANIFEST
from support.checker import bitwise_equal
from support.hf import HF, build_hf
from support.saving import rewrite_manifest

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _roundtrip(ex: FeatureExtractor, tmp_path: Path) -> FeatureExtractor:
    path = fxtap.save(ex, tmp_path / "ex.fxtap")
    loaded = fxtap.load(path)
    assert isinstance(loaded, FeatureExtractor)
    return loaded


def _same_run(a: FeatureExtractor, b: FeatureExtractor, inputs: dict[str, Any], train: bool) -> Any:
    torch.manual_seed(0)
    want = a.train(train)(**inputs)
    torch.manual_seed(0)
    got = b.train(train)(**inputs)
    assert want.keys() == got.keys()
    for key in want:
        assert type(got[key]) is type(want[key]), key
        assert bitwise_equal(pytree.tree_leaves(got[key]), pytree.tree_leaves(want[key])), key
    return want, got


def _hf_extractor(arch: str) -> tuple[FeatureExtractor, dict[str, Any]]:
    """An export-path extractor of the tiny ``arch`` at its ``HF`` leaf and functional taps,
    with the model's output in train mode; and its inputs."""
    model, inputs = build_hf(arch)
    leaf, func, _, _ = HF[arch]
    taps = {leaf: "leaf", func: "func"}
    ex = fxtap.create_feature_extractor(
        model,
        train_return_nodes={**taps, ":output": "out"},
        eval_return_nodes=taps,
        tracer="export",
        example_inputs=inputs,
    )
    return ex, inputs


def _batch(inputs: dict[str, Any], size: int) -> dict[str, Any]:
    return {k: torch.cat([v] * 3)[:size] if torch.is_tensor(v) else v for k, v in inputs.items()}


@pytest.mark.hf
@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "vit"])
def test_transformers_extractor_loads_safely_and_exactly(arch: str, tmp_path: Path) -> None:
    ex, inputs = _hf_extractor(arch)
    loaded = _roundtrip(ex, tmp_path)
    assert loaded.outputs == ex.outputs and loaded.kept == ex.kept
    with torch.no_grad():
        _same_run(ex, loaded, inputs, train=False)
        _, got = _same_run(ex, loaded, inputs, train=True)
        from transformers.utils import ModelOutput

        assert isinstance(got["out"], ModelOutput)  # rebuilt, the same type as the original's
        # dynamic batch: another size runs, a size below the exported range is refused
        _same_run(ex, loaded, _batch(inputs, 3), train=False)
        with pytest.raises(InputShapeError, match="has size 1 in dim 0"):
            loaded.eval()(**_batch(inputs, 1))


def test_torchvision_extractor_loads_safely_exactly_and_trains(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().train()
    taps = {"layer2.0.bn1": "bn", "layer3.1.add_": "add", "fc": "fc"}
    ex = fxtap.create_feature_extractor(model, taps, tracer="export", example_inputs=X)
    loaded = _roundtrip(ex, tmp_path)
    inputs = {"x": X}
    with torch.no_grad():
        _same_run(ex, loaded, inputs, train=False)
        _same_run(ex, loaded, {"x": torch.cat([X, X, X])[:5]}, train=False)
        with pytest.raises(InputShapeError, match="has size 1 in dim 0"):
            loaded.eval()(X[:1])
    # train mode: the same values, the same buffer updates, the same gradients
    for _ in range(2):
        want, got = _same_run(ex, loaded, inputs, train=True)
    mine, theirs = dict(ex.named_buffers()), dict(loaded.named_buffers())
    assert mine.keys() == theirs.keys() and any("num_batches_tracked" in k for k in mine)
    assert all(bitwise_equal(mine[k], theirs[k]) for k in mine)
    assert int(theirs["layer1.0.bn1.num_batches_tracked"]) == 2
    with torch.no_grad():  # copies of the loaded extractor run the same graphs
        for other in (copy.deepcopy(loaded), pickle.loads(pickle.dumps(loaded))):
            assert bitwise_equal(other.eval()(X)["fc"], loaded.eval()(X)["fc"])
    loaded.train()
    grads = []
    for extractor, out in ((ex, want), (loaded, got)):
        extractor.zero_grad(set_to_none=True)
        (out["fc"].sum() + out["bn"].sum()).backward()
        grads.append({k: p.grad for k, p in extractor.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert all(bitwise_equal(grads[0][k], grads[1][k]) for k in grads[0])


# --- copies: pickle, deepcopy and both save formats -------------------------------------------


def _copies(ex: FeatureExtractor, tmp_path: Path) -> dict[str, FeatureExtractor]:
    return {
        "pickle": pickle.loads(pickle.dumps(ex)),
        "deepcopy": copy.deepcopy(ex),
        "fxtap": fxtap.load(fxtap.save(ex, tmp_path / "ex.fxtap")),
        "pickle-format": fxtap.load(fxtap.save(ex, tmp_path / "ex.pt", fmt="pickle"), trust=True),
    }


class ConstantCall(nn.Module):
    """Adds ``arange(4)``: export records a call whose arguments are all constants."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc(x) + torch.arange(4) * 2)


def test_a_constant_only_call_survives_every_copy(tmp_path: Path) -> None:
    # torch.fx's pickle traces the generated code again, which runs arange(4) and asks for a
    # '_tensor_constant0' attribute the extractor does not have (AttributeError on load)
    ex = fxtap.create_feature_extractor(
        ConstantCall(), ["drop"], tracer="export", example_inputs=torch.randn(2, 4)
    )
    x = torch.randn(3, 4)
    for how, other in _copies(ex, tmp_path).items():
        assert other.kept == ex.kept, how
        names = {m: [n.name for n in ex.graph_for(m).nodes] for m in ("train", "eval")}
        assert {m: [n.name for n in other.graph_for(m).nodes] for m in names} == names, how
        with torch.no_grad():
            _same_run(ex, other, {"x": x}, train=False)
            _same_run(ex, other, {"x": x}, train=True)


@pytest.mark.hf
@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "vit"])
def test_transformers_extractor_survives_every_copy(arch: str, tmp_path: Path) -> None:
    ex, inputs = _hf_extractor(arch)
    for how, other in _copies(ex, tmp_path).items():
        assert other.outputs == ex.outputs and other.kept == ex.kept, how
        with torch.no_grad():
            _same_run(ex, other, inputs, train=False)
            _, got = _same_run(ex, other, inputs, train=True)
        from transformers.utils import ModelOutput

        assert isinstance(got["out"], ModelOutput), how


# --- hostile manifests -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
    ex = fxtap.create_feature_extractor(model, ["2"], tracer="export", example_inputs=X)
    return fxtap.save(ex, tmp_path_factory.mktemp("saved") / "ex.fxtap")


def _first_op(manifest: dict[str, Any], mode: str = "eval") -> dict[str, Any]:
    return next(n for n in manifest["graphs"][mode] if "op" in (n["target"] or {}))


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        (["aten", "no_such_op", "default"], r"'aten::no_such_op.default'.*does not allow"),
        (["aten", "from_file", "default"], r"'aten::from_file.default'.*does not allow"),
        (["aten", "_print", "default"], r"does not allow"),
        (["aten", "add.Tensor", "default"], r"'add.Tensor' is not a plain identifier"),
        (["aten", "add[0]", "default"], r"is not a plain identifier"),
        (["aten", "add", "Tensor]"], r"is not a plain identifier"),
        (["torch", "load", "default"], r"does not allow"),
        (["aten", "add"], r"\[namespace, name, overload\]"),
        (["aten", "add", 3], r"is not a plain identifier"),
        ("aten::add.Tensor", r"expected a list"),
    ],
)
def test_hostile_op_targets_are_refused(
    saved: Path, tmp_path: Path, parts: Any, match: str
) -> None:
    def edit(manifest: dict[str, Any]) -> None:
        _first_op(manifest)["target"] = {"op": parts}

    path = rewrite_manifest(saved, target=tmp_path / "bad.fxtap", edit=edit)
    with pytest.raises(LoadError, match=match):
        fxtap.load(path)


def test_an_op_target_with_other_keys_is_refused(saved: Path, tmp_path: Path) -> None:
    def edit(manifest: dict[str, Any]) -> None:
        _first_op(manifest)["target"]["function"] = "torch:load"

    with pytest.raises(LoadError, match="unexpected"):
        fxtap.load(rewrite_manifest(saved, target=tmp_path / "bad.fxtap", edit=edit))


def test_an_allowlisted_op_swapped_in_loads_as_that_op(saved: Path, tmp_path: Path) -> None:
    """The loader builds exactly the op the file names, from the allowlist."""

    def edit(manifest: dict[str, Any]) -> None:
        node = next(
            n
            for n in manifest["graphs"]["eval"]
            if n["target"] == {"op": ["aten", "relu_", "default"]}
        )
        node["target"] = {"op": ["aten", "relu", "default"]}

    loaded = fxtap.load(rewrite_manifest(saved, target=tmp_path / "ok.fxtap", edit=edit))
    ops = {n.target for n in loaded.graph_for("eval").nodes if n.op == "call_function"}
    assert torch.ops.aten.relu.default in ops and torch.ops.aten.relu_.default not in ops
    assert bitwise_equal(loaded.eval()(X)["2"], fxtap.load(saved).eval()(X)["2"])


# --- output structures -----------------------------------------------------------------------


class Structured(nn.Module):
    """Returns a ModelOutput (a registered pytree node) from a model torch.fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

        y = self.fc(x)
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=y, hidden_states=(x, y)
        )


@pytest.fixture(scope="module")
def structured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    # imported before export runs: transformers skips registering pytree nodes while compiling
    pytest.importorskip("transformers.modeling_outputs")
    model = Structured()
    ex = fxtap.create_feature_extractor(
        model, [":output"], tracer="export", example_inputs=torch.randn(2, 4)
    )
    return fxtap.save(ex, tmp_path_factory.mktemp("structured") / "ex.fxtap"), model


def _spec(manifest: dict[str, Any]) -> dict[str, Any]:
    node = next(
        n for n in manifest["graphs"]["eval"]
        if n["target"] == {"function": "fxtap.trace._export:rebuild_output"}
    )  # fmt: skip
    return node["args"]["tuple"]


@pytest.mark.hf
def test_model_output_is_rebuilt_from_checked_data(structured: tuple[Path, nn.Module]) -> None:
    path, model = structured
    loaded = fxtap.load(path)
    x = torch.randn(3, 4)
    with torch.no_grad():
        out, want = loaded.eval()(x)[":output"], model(x)
    assert type(out) is type(want) and type(out.hidden_states) is tuple
    assert bitwise_equal(pytree.tree_leaves(out), pytree.tree_leaves(want))
    for other in (copy.deepcopy(loaded), pickle.loads(pickle.dumps(loaded))):
        with torch.no_grad():
            again = other.eval()(x)[":output"]
        assert type(again) is type(want)
        assert bitwise_equal(pytree.tree_leaves(again), pytree.tree_leaves(want))
    with zipfile.ZipFile(path) as archive:
        spec = _spec(json.loads(archive.read(MANIFEST)))[0]["treespec"]
    assert (
        spec["type"] == "transformers.modeling_outputs.BaseModelOutputWithPoolingAndCrossAttentions"
    )
    assert spec["context"] == ["last_hidden_state", "hidden_states"]


@pytest.mark.hf
@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda a: a[0]["treespec"].update(type="collections.namedtuple"), r"not one the safe"),
        (lambda a: a[0]["treespec"].update(type="os.system"), r"not one the safe"),
        (lambda a: a[0]["treespec"].update(context=[{"__enum__": "os:system"}]), r"a list of keys"),
        (lambda a: a[0]["treespec"].update(context='["a"]'), r"a list of keys"),
        (lambda a: a[0]["treespec"].update(extra=1), r"unexpected"),
        (lambda a: a.__setitem__(0, '[1, {"type": "os.system"}]'), r"treespec"),
        (
            lambda a: a[0]["treespec"]["children"].__setitem__(
                1, {"type": "x", "context": None, "children": []}
            ),
            r"'x'",
        ),
    ],
)
def test_hostile_output_structures_are_refused(
    structured: tuple[Path, nn.Module], tmp_path: Path, edit: Any, match: str
) -> None:
    path = rewrite_manifest(
        structured[0], target=tmp_path / "bad.fxtap", edit=lambda m: edit(_spec(m))
    )
    with pytest.raises(LoadError, match=match):
        fxtap.load(path)
