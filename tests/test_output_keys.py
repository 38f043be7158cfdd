"""Output keys stay what the user gave: ``{"layer1": 1}`` returns key ``1``, as
torchvision's ``IntermediateLayerGetter`` does, through save, load and pickle too."""

from __future__ import annotations

import copy
import io
import json
import zipfile

import pytest
import torch
import torchvision
from torchvision.models._utils import IntermediateLayerGetter

import fxtap
from fxtap.errors import LoadError
from fxtap.save import MANIFEST
from support.models import DataDependent

RETURN_LAYERS = {"layer1": 1, "layer2": "1", "layer3": 0}


def _assert_same(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    assert [type(k) for k in got] == [type(k) for k in want]
    for key in want:
        assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_integer_keys_match_intermediate_layer_getter(training):
    torch.manual_seed(0)
    model = torchvision.models.resnet18().train(training)
    getter = IntermediateLayerGetter(copy.deepcopy(model), dict(RETURN_LAYERS))
    extractor = fxtap.create_feature_extractor(copy.deepcopy(model), dict(RETURN_LAYERS))
    x = torch.rand(2, 3, 32, 32)
    _assert_same(extractor(x), getter(x))
    assert extractor.outputs["eval"] == {
        1: "layer1.1.relu_1",
        "1": "layer2.1.relu_1",
        0: "layer3.1.relu_1",
    }


def test_integer_keys_survive_save_load_and_pickle(tmp_path):
    model = torchvision.models.resnet18().eval()
    extractor = fxtap.create_feature_extractor(model, dict(RETURN_LAYERS))
    x = torch.rand(1, 3, 32, 32)
    want = extractor(x)
    assert set(want) == {1, "1", 0}
    fxtap.save(extractor, tmp_path / "r.fxtap")
    loaded = fxtap.load(tmp_path / "r.fxtap")
    _assert_same(loaded(x), want)
    assert loaded.outputs == extractor.outputs
    buffer = io.BytesIO()
    torch.save(extractor, buffer)
    buffer.seek(0)
    unpickled = torch.load(buffer, weights_only=False)
    _assert_same(unpickled(x), want)


def test_integer_keys_of_a_capture_extractor_survive_save_load(tmp_path):
    with pytest.warns(UserWarning):
        extractor = fxtap.create_feature_extractor(DataDependent(), {"gate": 7, ":output": "out"})
    x = torch.rand(1, 4)
    want = extractor(x)
    assert list(want) == [7, "out"]
    fxtap.save(extractor, tmp_path / "c.fxtap")
    _assert_same(fxtap.load(tmp_path / "c.fxtap", trust=True)(x), want)  # a class of tests/


def _rewrite_outputs(src, dst, outputs) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == MANIFEST:
                manifest = json.loads(data)
                manifest["outputs"]["eval"] = outputs
                data = json.dumps(manifest).encode()
            zout.writestr(item, data)


@pytest.mark.parametrize(
    "outputs, needle",
    [
        ([[True, "layer1.1.relu_1"]], "not a string or integer"),
        ([[1.0, "layer1.1.relu_1"]], "not a string or integer"),
        ([[1, "layer1.1.relu_1"], [1, "layer1.1.relu_1"]], "appears twice"),
        ([[1]], "[key, node name] pair"),
        ([[1, 2]], "expected a string"),
    ],
)
def test_a_manifest_with_bad_output_keys_is_refused(tmp_path, outputs, needle):
    extractor = fxtap.create_feature_extractor(torchvision.models.resnet18(), {"layer1": 1})
    fxtap.save(extractor, tmp_path / "good.fxtap")
    _rewrite_outputs(tmp_path / "good.fxtap", tmp_path / "bad.fxtap", outputs)
    with pytest.raises(LoadError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        fxtap.load(tmp_path / "bad.fxtap")
