"""Saving extractors over parametrized modules (weight_norm, spectral_norm, orthogonal).

torch refuses to pickle a parametrized module ("only supported through state_dict()"); fxtap
stores the base class, the parametrization modules and the original tensors, and rebuilds the
parametrization on load, in both formats. Values and gradients are compared bitwise with
forward hooks on a copy of the unmodified model, in both modes (spectral_norm's power
iteration updates its buffers in train mode, so every run starts from the saved state).
"""

from __future__ import annotations

import copy
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import fxtap
from fxtap.capture import CaptureExtractor
from fxtap.errors import LoadError
from fxtap.save import load, save
from support import models
from support.checker import bitwise_equal, hooked
from support.saving import rewrite_manifest

NODES = ["conv", "proj", "rotate", "plain"]
PARAMETRIZED = {"conv": "weight", "proj": "weight", "rotate": "weight"}
FORMATS = ["fxtap", "pickle"]


@pytest.fixture
def saved(tmp_path: Path) -> Callable[[str], tuple[nn.Module, Any]]:
    """``fmt`` -> (a copy of the model as saved, the loaded extractor)."""

    def make(fmt: str) -> tuple[nn.Module, Any]:
        torch.manual_seed(0)
        model = models.Parametrized()
        extractor = fxtap.create_feature_extractor(model, NODES)
        path = save(extractor, tmp_path / f"p.{fmt}", fmt=fmt)
        return copy.deepcopy(model), load(path, trust=fmt == "pickle")

    return make


def grads(values: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor | None]:
    """Gradient of a score of every value with respect to each parameter, by name."""
    named = dict(module.named_parameters())
    score = sum(v.square().sum() for v in values.values())
    found = torch.autograd.grad(score, list(named.values()), allow_unused=True)
    return dict(zip(named, found, strict=True))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_values_and_gradients_equal_the_unmodified_model(saved: Any, fmt: str, training: bool):
    reference, loaded = saved(fmt)
    x = torch.randn(3, 2, 7)
    expected, _ = hooked(reference, NODES, [x], training)
    got = loaded.train(training)(x)
    assert set(got) == set(NODES)
    for node in NODES:
        assert bitwise_equal(got[node], expected[node]), node
    want, have = grads(expected, reference), grads(got, loaded)
    assert "conv.parametrizations.weight.original1" in have
    for name, grad in have.items():
        assert grad is not None and bitwise_equal(grad, want[name]), name
    # spectral_norm's power iteration ran in train mode only, the same way in both
    u = "proj.parametrizations.weight.0._u"
    assert bitwise_equal(loaded.get_buffer(u), reference.get_buffer(u))


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_parametrization_stays_active_after_loading(saved: Any, fmt: str):
    reference, loaded = saved(fmt)
    for path, name in PARAMETRIZED.items():
        module = loaded.get_submodule(path)
        assert parametrize.is_parametrized(module, name), path
        base = parametrize.type_before_parametrizations(reference.get_submodule(path))
        assert parametrize.type_before_parametrizations(module) is base, path
        assert name not in module._parameters  # computed on access
    conv = loaded.conv
    before = conv.weight.detach().clone()
    with torch.no_grad():
        conv.parametrizations.weight.original0.mul_(2)  # weight_norm's magnitude
    assert bitwise_equal(conv.weight.detach(), before * 2)
    assert bitwise_equal(reference.conv.weight.detach(), before)  # nothing shared
    # orthogonal: the weight is orthogonal, computed from the stored original
    w = loaded.rotate.weight.detach()
    assert torch.allclose(w @ w.T, torch.eye(4), atol=1e-5)
    # assigning the weight goes through right_inverse, as in the original
    loaded.proj.weight = reference.proj.weight.detach()
    assert parametrize.is_parametrized(loaded.proj, "weight")


@pytest.mark.parametrize("fmt", FORMATS)
def test_old_weight_norm_checkpoints_still_load(saved: Any, fmt: str):
    reference, loaded = saved(fmt)
    state = {k: v.clone() for k, v in reference.conv.state_dict().items()}
    g = state.pop("parametrizations.weight.original0") + 1
    v = state.pop("parametrizations.weight.original1")
    state |= {"weight_g": g, "weight_v": v}  # the keys of torch.nn.utils.weight_norm
    loaded.conv.load_state_dict(state)
    assert bitwise_equal(loaded.conv.parametrizations.weight.original0.detach(), g)


def test_pickle_and_deepcopy_of_the_extractor():
    torch.manual_seed(0)
    model = models.Parametrized()
    extractor = fxtap.create_feature_extractor(model, NODES).eval()
    x = torch.randn(2, 2, 5)
    with torch.no_grad():
        expected = extractor(x)
        for other in (pickle.loads(pickle.dumps(extractor)), copy.deepcopy(extractor)):
            assert parametrize.is_parametrized(other.conv, "weight")
            assert bitwise_equal(other(x), expected)
            assert other.conv.parametrizations.weight.original1 is not (
                extractor.conv.parametrizations.weight.original1
            )
    # the model itself is left as it was: its class, its hooks
    assert type(model.conv).__name__ == "ParametrizedConv1d"
    assert len(model.conv._load_state_dict_pre_hooks) == 1


def test_capture_extractors_over_parametrized_modules(tmp_path: Path):
    from support.capture_models import Wav2Vec2Like

    torch.manual_seed(0)
    model = Wav2Vec2Like(True).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        extractor = fxtap.create_feature_extractor(model, ["pos.conv", "proj", "out"])
    assert isinstance(extractor, CaptureExtractor)
    wav = [w for w in torch.randn(2, 1, 60)]
    with torch.no_grad():
        expected = extractor(wav)
    copies = [pickle.loads(pickle.dumps(extractor)), copy.deepcopy(extractor)]
    for fmt in FORMATS:
        copies.append(load(save(extractor, tmp_path / f"w.{fmt}", fmt=fmt), trust=True))
    for other in copies:
        assert isinstance(other, CaptureExtractor)
        assert parametrize.is_parametrized(other.model.pos.conv, "weight")
        with torch.no_grad():
            assert bitwise_equal(other(wav), expected)


# --- hostile files -----------------------------------------------------------------------------


def _plist(manifest: dict[str, Any], path: str = "conv") -> dict[str, Any]:
    return manifest["modules"][path]["modules"]["parametrizations"]["modules"]["weight"]


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(manifest: dict[str, Any]) -> None:
        manifest["modules"]["conv"][key] = value

    return edit


def _rename_tensor(manifest: dict[str, Any]) -> None:
    params = _plist(manifest)["parameters"]
    params["original"] = params.pop("original1")  # a name the class holds, but not here


def _count(manifest: dict[str, Any]) -> None:
    _plist(manifest)["config"]["ntensors"] = 3


def _shadow(manifest: dict[str, Any]) -> None:
    holder = manifest["modules"]["conv"]["modules"]["parametrizations"]["modules"]
    holder["_conv_forward"] = holder.pop("weight")  # a method of Conv1d


def _foreign_class(manifest: dict[str, Any]) -> None:
    _plist(manifest)["modules"]["0"]["class"] = "torch.nn.utils.parametrizations:_Evil"


def _plain_dict(manifest: dict[str, Any]) -> None:
    manifest["modules"]["conv"]["modules"]["parametrizations"]["class"] = (
        "torch.nn.modules.container:Sequential"
    )


def _unknown_enum(manifest: dict[str, Any]) -> None:
    config = _plist(manifest, "rotate")["modules"]["0"]["config"]
    config["orthogonal_map"] = {"enum": {"class": "os:system", "name": "x"}}


def _bad_member(manifest: dict[str, Any]) -> None:
    config = _plist(manifest, "rotate")["modules"]["0"]["config"]
    config["orthogonal_map"]["enum"]["name"] = "__class__"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("parametrized", "yes"), r"parametrized: expected true or false"),
        (_set("extra", 1), r"unexpected \['extra'\]"),
        (_rename_tensor, r"holds the tensors \['original', 'original0'\], not"),
        (_count, r"holds the tensors .*not \['original0', 'original1', 'original2'\]"),
        (_shadow, r"'_conv_forward' is an attribute of torch.nn.modules.conv:Conv1d"),
        (_foreign_class, r"_Evil.*does not allow.*closest"),
        (_plain_dict, r"a parametrized module holds a ModuleDict|Sequential.*does not allow"),
        (_unknown_enum, r"enum 'os:system'.*does not allow"),
        (_bad_member, r"'__class__' is not a plain identifier"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else "",
)
def test_hostile_parametrizations_are_refused(tmp_path: Path, edit: Any, message: str):
    torch.manual_seed(0)
    path = save(fxtap.create_feature_extractor(models.Parametrized(), NODES), tmp_path / "p.fxtap")
    rewrite_manifest(path, edit)
    with pytest.raises(LoadError, match=message):
        load(path)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_torchaudio_wav2vec2_loads_without_trust(tmp_path: Path, training: bool):
    """wav2vec2's positional convolution is weight-normed; its opaque encoder is saved whole."""
    pytest.importorskip("torchaudio")
    from support.audio import WAVES, wav2vec2

    model = wav2vec2(layer_drop=0.0).train(training)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the opaque feature extractor and encoder
        extractor = fxtap.create_feature_extractor(model, {"encoder": "leaf", "getitem": "func"})
    loaded = load(save(extractor, tmp_path / "w2v.fxtap"))
    conv = loaded.get_submodule("encoder.transformer.pos_conv_embed.conv")
    assert parametrize.is_parametrized(conv, "weight")
    reference = copy.deepcopy(model)
    seen: dict[str, torch.Tensor] = {}
    handle = reference.encoder.register_forward_hook(lambda _m, _i, out: seen.update(leaf=out))
    torch.manual_seed(0)
    reference(WAVES)
    handle.remove()
    torch.manual_seed(0)
    got = loaded(WAVES)
    assert bitwise_equal(got["leaf"], seen["leaf"])
    want, have = grads({"leaf": seen["leaf"]}, reference), grads({"leaf": got["leaf"]}, loaded)
    assert (
        have["encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1"]
        is not None
    )
    for name, grad in have.items():
        assert grad is not None and bitwise_equal(grad, want[name]), name
