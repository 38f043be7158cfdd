"""Saving and loading extractors: bitwise round trips, the trust opt-in, damaged files."""

from __future__ import annotations

import json
import os
import stat
import zipfile
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from fxtap import create_feature_extractor
from fxtap.errors import InvalidArgumentError, LoadError, OutputPathError
from fxtap.save import MANIFEST, load, save
from support import models as fixtures
from support.saving import rewrite_manifest


def outputs(extractor: nn.Module, mode: str, x: Any) -> dict[str, Any]:
    """Outputs in ``mode`` with a fixed seed, so random ops (dropout) draw alike."""
    extractor.train(mode == "train")
    torch.manual_seed(0)
    with torch.no_grad():
        return extractor(x)


def assert_same_outputs(a: nn.Module, b: nn.Module, x: Any, modes=("eval", "train")) -> None:
    for mode in modes:
        expected, got = outputs(a, mode, x), outputs(b, mode, x)
        assert list(expected) == list(got)
        for key in expected:
            assert torch.equal(expected[key], got[key]), f"{mode} output {key!r} differs"


@pytest.fixture(scope="module")
def resnet_extractor():
    model = torchvision.models.resnet18(weights=None)
    return create_feature_extractor(model, {"layer2": "mid", "layer4": "feat", ":output": "logits"})


def test_resnet_round_trip_is_bitwise_in_both_modes(resnet_extractor, tmp_path):
    path = save(resnet_extractor, tmp_path / "resnet18.fxtap")
    loaded = load(path)
    x = torch.randn(2, 3, 64, 64)
    assert_same_outputs(resnet_extractor, loaded, x)
    assert loaded.outputs == resnet_extractor.outputs
    assert loaded.kept == resnet_extractor.kept
    assert loaded.return_nodes == resnet_extractor.return_nodes
    state, loaded_state = resnet_extractor.state_dict(), loaded.state_dict()
    assert sorted(state) == sorted(loaded_state)
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)


def test_loaded_extractor_keeps_mode_parameters_and_gradients(resnet_extractor, tmp_path):
    resnet_extractor.train()
    loaded = load(save(resnet_extractor, tmp_path / "r.fxtap"))
    assert loaded.training
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in loaded.parameters())
    out = loaded(torch.randn(2, 3, 32, 32))
    (out["mid"].sum() + out["feat"].sum()).backward()
    layer2 = [p for n, p in loaded.named_parameters() if n.startswith("layer2")]
    assert layer2 and all(p.grad is not None for p in layer2)
    resnet_extractor.eval()
    assert not load(save(resnet_extractor, tmp_path / "e.fxtap")).training


def test_train_mode_updates_the_same_buffers(resnet_extractor, tmp_path):
    import copy

    original = copy.deepcopy(resnet_extractor)
    loaded = load(save(original, tmp_path / "r.fxtap"))
    x = torch.randn(2, 3, 32, 32)
    outputs(original, "train", x)
    outputs(loaded, "train", x)
    ours, theirs = original.state_dict(), loaded.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize(
    ("factory", "nodes", "shape"),
    [
        (fixtures.Nested, ["stage.blocks.0", "stage", ":output"], (2, 3, 5, 5)),
        (fixtures.CalledTwice, ["act", "act_1"], (2, 4)),
        (fixtures.TopLevelFunctions, ["cat", ":output"], (2, 3, 6, 6)),
        (fixtures.TrainOnlyBranch, [":output"], (3, 4)),
        (fixtures.DropoutNet, ["drop", ":output"], (3, 4)),
        (fixtures.InplaceReLU, ["relu", ":output"], (2, 4)),
        (fixtures.TensorConstant, [":output"], (2, 3)),
        (fixtures.SuffixedNames, ["act_2", "stage_10"], (1, 3, 2, 2)),
    ],
)
def test_fixture_round_trips(factory, nodes, shape, tmp_path):
    torch.manual_seed(0)
    extractor = create_feature_extractor(factory(), nodes)
    loaded = load(save(extractor, tmp_path / "m.fxtap"))
    assert_same_outputs(extractor, loaded, torch.randn(shape))


def test_file_holds_json_graphs_safetensors_and_readable_code(resnet_extractor, tmp_path):
    path = save(resnet_extractor, tmp_path / "r.fxtap")
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read(MANIFEST))
        code = archive.read("code/eval.py").decode()
    assert names == {MANIFEST, "weights.safetensors", "code/train.py", "code/eval.py"}
    assert not any(n.endswith(".pkl") for n in names)
    assert manifest["format"] == "fxtap-extractor"
    assert set(manifest["graphs"]) == {"train", "eval"}
    assert "def forward(self" in code and "layer2" in code
    assert not list(tmp_path.glob(".r.fxtap.*")), "temporary file left behind"
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode & stat.S_IRGRP or os.umask(0o022) & stat.S_IRGRP


def test_pickle_needs_trust(resnet_extractor, tmp_path):
    path = save(resnet_extractor, tmp_path / "r.pt", fmt="pickle")
    with pytest.raises(LoadError, match=r"r\.pt.*pickled.*runs code.*trust=True"):
        load(path)
    loaded = load(path, trust=True)
    assert_same_outputs(resnet_extractor, loaded, torch.randn(1, 3, 32, 32), modes=("eval",))


def test_safe_loader_refuses_functions_outside_the_allowlist(tmp_path):
    extractor = create_feature_extractor(fixtures.TopLevelFunctions(), [":output"])
    path = save(extractor, tmp_path / "m.fxtap")

    def swap_to_eval(manifest):
        for node in manifest["graphs"]["eval"]:
            if node["op"] == "call_function":
                node["target"] = {"function": "builtins:eval"}
                break

    rewrite_manifest(path, swap_to_eval)
    with pytest.raises(LoadError, match=r"m\.fxtap.*builtins:eval.*trust=True"):
        load(path)


def test_safe_loader_refuses_module_classes_outside_torch(tmp_path):
    extractor = create_feature_extractor(fixtures.Nested(), ["stage"])
    path = save(extractor, tmp_path / "m.fxtap")

    def swap_class(manifest):
        manifest["modules"]["stem"]["class"] = "support.models:Nested"

    rewrite_manifest(path, swap_class)
    with pytest.raises(
        LoadError, match=r"modules\.stem\.class.*'support\.models:Nested'.*not allow.*trust=True"
    ):
        load(path)


class Scaler(nn.Module):
    """A user leaf module: plain data is saved; loading its class needs trust."""

    def __init__(self, factor: float = 2.0) -> None:
        super().__init__()
        self.factor = factor
        self.weight = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight * self.factor


class WithScaler(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.scale = Scaler(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(self.fc(x))


def test_user_leaf_modules_load_with_trust(tmp_path):
    extractor = create_feature_extractor(
        WithScaler(), ["scale"], tracer_kwargs={"leaf_modules": [Scaler]}
    )
    path = save(extractor, tmp_path / "m.fxtap")
    with pytest.raises(LoadError, match=r"Scaler.*trust=True"):
        load(path)
    loaded = load(path, trust=True)
    assert isinstance(loaded.scale, Scaler) and loaded.scale.factor == 3.0
    assert_same_outputs(extractor, loaded, torch.randn(2, 4))


def test_unsavable_module_attribute_suggests_pickle(tmp_path):
    model = WithScaler()
    model.scale.post = lambda t: t  # a function cannot be written as data
    extractor = create_feature_extractor(model, ["scale"], tracer_kwargs={"leaf_modules": [Scaler]})
    with pytest.raises(InvalidArgumentError, match=r"'scale'.*'post'.*fmt='pickle'"):
        save(extractor, tmp_path / "m.fxtap")
    assert not (tmp_path / "m.fxtap").exists()


def test_strings_over_the_format_limit_are_refused_on_save_not_on_load(tmp_path):
    from fxtap.save._schema import MAX_STRING

    key = "k" * (MAX_STRING + 1)
    extractor = create_feature_extractor(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), {"0": key})
    with pytest.raises(InvalidArgumentError, match=r"a key of outputs\.(eval|train) .* 4097 ch"):
        save(extractor, tmp_path / "m.fxtap")
    model = WithScaler()
    model.scale.note = "n" * (MAX_STRING + 1)  # a configuration value
    extractor = create_feature_extractor(model, ["scale"], tracer_kwargs={"leaf_modules": [Scaler]})
    with pytest.raises(InvalidArgumentError, match=r"scale\.config\.note .*at most 4096.*pickle"):
        save(extractor, tmp_path / "m.fxtap")
    assert not (tmp_path / "m.fxtap").exists()
    assert (
        load(save(extractor, tmp_path / "m.pt", fmt="pickle"), trust=True).scale.note
        == model.scale.note
    )
    model.scale.note = "n" * MAX_STRING  # at the limit: saved and loaded
    extractor = create_feature_extractor(model, ["scale"], tracer_kwargs={"leaf_modules": [Scaler]})
    assert load(save(extractor, tmp_path / "m.fxtap"), trust=True).scale.note == model.scale.note


def test_a_long_string_in_a_file_names_the_limit(resnet_extractor, tmp_path):
    path = save(resnet_extractor, tmp_path / "r.fxtap")

    def long_key(manifest: dict[str, Any]) -> None:
        (name, *_) = manifest["outputs"]["eval"].values()
        manifest["outputs"]["eval"] = {"x" * 5000: name}

    rewrite_manifest(path, long_key)
    with pytest.raises(
        LoadError, match="expected a string of at most 4096 characters, got one of 5000"
    ):
        load(path)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_damaged_files_raise_load_error_naming_the_file(resnet_extractor, tmp_path, damage):
    path = save(resnet_extractor, tmp_path / "bad.fxtap")
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # inside the weights: the zip's CRC check catches it
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    else:
        path.write_bytes(b"")
    with pytest.raises(LoadError, match=r"bad\.fxtap.*(truncated or corrupted).*Save the"):
        load(path)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(LoadError, match=r"nope\.fxtap.*no such file"):
        load(tmp_path / "nope.fxtap")
    foreign = tmp_path / "other.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(LoadError, match=r"other\.zip.*not a saved fxtap extractor"):
        load(foreign)


def test_bad_arguments_and_paths(resnet_extractor, tmp_path):
    with pytest.raises(InvalidArgumentError, match="FeatureExtractor"):
        save(nn.Linear(2, 2), tmp_path / "x.fxtap")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"fmt 'zip'"):
        save(resnet_extractor, tmp_path / "x.fxtap", fmt="zip")
    with pytest.raises(OutputPathError, match=r"missing.*Pick a path"):
        save(resnet_extractor, tmp_path / "missing" / "x.fxtap")
    with pytest.raises(OutputPathError, match="directory"):
        save(resnet_extractor, tmp_path)


class DataDependentRoot(nn.Module):
    """The root branches on a tensor value: fxtap captures with hooks instead of pruning."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = x * 2
        return self.fc(x)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("fmt", ["fxtap", "pickle"])
def test_capture_extractors_save_in_both_formats(tmp_path, fmt):
    extractor = create_feature_extractor(DataDependentRoot(), ["fc"])
    assert type(extractor).__name__ == "CaptureExtractor"
    path = save(extractor, tmp_path / "c.fxtap", fmt=fmt)
    # the model's class is this test's own code: loading it needs trust in either format
    with pytest.raises(LoadError, match=r"trust=True"):
        load(path)
    loaded = load(path, trust=True)
    assert type(loaded).__name__ == "CaptureExtractor"
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(loaded(x)["fc"], extractor(x)["fc"])


def test_meta_device_extractors_are_refused_with_the_fix(tmp_path):
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    extractor = create_feature_extractor(model, ["1"])
    with pytest.raises(InvalidArgumentError, match=r"meta device.*load_state_dict"):
        save(extractor, tmp_path / "m.fxtap")
    assert not list(tmp_path.iterdir())


def test_refusals_name_the_file_member_and_field(tmp_path):
    path = save(create_feature_extractor(fixtures.Nested(), ["stage"]), tmp_path / "m.fxtap")

    def rename(manifest):
        manifest["graphs"]["eval"][0]["target"] = "x=__import__('os')"

    rewrite_manifest(path, rename)
    with pytest.raises(LoadError, match=r"m\.fxtap.*graphs\.eval\[0\]\.target.*plain identifier"):
        load(path)


def test_trust_must_be_a_bool(resnet_extractor, tmp_path):
    path = save(resnet_extractor, tmp_path / "r.pt", fmt="pickle")
    for value in ("false", 1, None):
        with pytest.raises(InvalidArgumentError, match=r"trust=.* is not a bool"):
            load(path, trust=value)  # type: ignore[arg-type]


def test_bugs_in_fxtap_surface_as_themselves(tmp_path, monkeypatch):
    from fxtap.save import _safe_load

    path = save(create_feature_extractor(fixtures.Nested(), ["stage"]), tmp_path / "m.fxtap")

    def broken(*args, **kwargs):
        raise KeyError("a bug in fxtap, not in the file")

    monkeypatch.setattr(_safe_load, "_build_graph", broken)
    with pytest.raises(KeyError, match="a bug in fxtap"):
        load(path)


def test_the_command_line_loads_through_the_safe_loader(tmp_path, capsys):
    from fxtap.cli import main

    sentinel = tmp_path / "ran"
    path = save(create_feature_extractor(fixtures.Nested(), ["stage"]), tmp_path / "m.fxtap")

    def inject(manifest):
        for mode in ("train", "eval"):
            manifest["graphs"][mode][0]["target"] = f"x=open({str(sentinel)!r}, 'w')"

    rewrite_manifest(path, inject)
    for argv in (["nodes", str(path)], ["render", str(path), "-o", str(tmp_path / "out")]):
        assert main(argv) == 1
        assert "plain identifier" in capsys.readouterr().err
    assert not sentinel.exists()


class Indexes(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[0] + 1


@pytest.mark.parametrize("warnings_as", ["error", "default"])
def test_code_that_can_only_fail_is_refused_whatever_the_warning_filters(tmp_path, warnings_as):
    """``None[0]`` compiles with a SyntaxWarning (an error under -W error): a LoadError either way."""
    import warnings

    path = save(create_feature_extractor(Indexes(), [":output"]), tmp_path / "i.fxtap")

    def index_none(manifest):
        for mode in ("train", "eval"):
            getitem = next(n for n in manifest["graphs"][mode] if n["name"] == "getitem")
            getitem["args"]["tuple"][0] = None

    rewrite_manifest(path, index_none)
    with warnings.catch_warnings():
        warnings.simplefilter(warnings_as, SyntaxWarning)
        with pytest.raises(LoadError, match=r"graphs: the generated code cannot run"):
            load(path)
