"""Hugging Face extractors in the safe format (fxtap.save._hf), tiny configs (marked ``hf``).

A capture extractor stores its model as the class, ``config.to_dict()``, the transformers
version and the kept weights; loading rebuilds it with ``_from_config`` and fxtap's capture
builder. Its values and gradients must equal forward hooks on the unmodified model, bitwise,
in both modes. An export extractor stores ATen graphs and tensors only (no transformers
state); it must equal the unsaved extractor, values and parameter gradients, in both modes.
A file saved under another transformers version is refused, naming both versions.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree

import fxtap
from fxtap import LoadError
from fxtap.capture import CaptureExtractor
from fxtap.save import MANIFEST
from support.checker import bitwise_equal, output_score, preserved, tensor_grads
from support.hf import HF, build_hf
from support.saving import json_paths, rewrite_manifest

pytestmark = pytest.mark.hf

ARCHS = ("llama", "mistral", "qwen2", "bert", "t5_decoder", "whisper_encoder")
EXAMPLES = int(os.environ.get("FXTAP_HF_MUTATIONS", "100"))
MODES = pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])


def _capture(name: str, training: bool) -> tuple[nn.Module, CaptureExtractor, dict[str, Any]]:
    torch.manual_seed(0)
    model, inputs = build_hf(name)
    model.train(training)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the capture path is used
        ex = fxtap.create_feature_extractor(
            model, {HF[name][0]: "tap", ":output": "out"}, tracer="fx"
        )
    assert isinstance(ex, CaptureExtractor)
    return model, ex, inputs


def _hooked(model: nn.Module, path: str, inputs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """The module's output seen by a forward hook, the model's output, and the gradient of
    ``output_score`` at the hooked value; RNG, buffers and gradients are put back."""
    kept: list[Any] = []

    def hook(_m: nn.Module, _args: Any, out: Any) -> Any:
        if not kept:
            kept.append(out)
            return out.clone()
        return None

    handle = model.get_submodule(path).register_forward_hook(hook)
    try:
        with preserved(model):
            torch.manual_seed(0)
            output = model(**inputs)
            return kept[0], output, tensor_grads(output_score(output), kept[0])
    finally:
        handle.remove()


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]


def _manifest(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read(MANIFEST))


@MODES
@pytest.mark.parametrize("name", ARCHS)
def test_capture_extractor_is_stored_as_class_config_and_weights(
    name: str, training: bool, tmp_path: Path
) -> None:
    import transformers

    model, ex, inputs = _capture(name, training)
    path = fxtap.save(ex, tmp_path / f"{name}.fxtap")
    stored = _manifest(path)["model"]["transformers"]
    cls = type(model)
    assert stored["class"] == f"{cls.__module__}:{cls.__qualname__}"
    assert stored["version"] == transformers.__version__
    assert stored["attention"] == model.config._attn_implementation
    assert set(stored["parameters"]) == {
        k for k, _ in model.named_parameters(remove_duplicate=False)
    }
    assert "_kernel_funcs" not in path.read_bytes().decode("latin-1")

    loaded = fxtap.load(path)
    assert isinstance(loaded, CaptureExtractor) and loaded.training == training
    assert type(loaded.model) is cls and loaded.model.config.to_dict() == model.config.to_dict()
    tap = HF[name][0]
    value, output, expected = _hooked(copy.deepcopy(model), tap, inputs)
    torch.manual_seed(0)  # the same dropout draws in train mode
    out = loaded(**inputs)
    assert bitwise_equal(out["tap"], value)
    assert bitwise_equal(_tensors(out["out"]), _tensors(output))
    got = tensor_grads(output_score(out["out"]), out["tap"])
    assert got[0] is not None and bitwise_equal(got, expected)


@MODES
@pytest.mark.parametrize("name", ARCHS)
def test_export_extractor_loads_with_the_same_values_and_gradients(
    name: str, training: bool, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model, inputs = build_hf(name)
    leaf, func, _, _ = HF[name]
    ex = fxtap.create_feature_extractor(
        model,
        {leaf: "leaf", func: "func", ":output": "out"},
        tracer="export",
        example_inputs=inputs,
    )
    path = fxtap.save(ex, tmp_path / f"{name}.fxtap")
    manifest = _manifest(path)
    assert not manifest["modules"]  # ATen graphs and tensors: no transformers state at all
    loaded = fxtap.load(path)
    results = []
    for extractor in (ex, loaded):
        extractor.train(training)
        params = {k: p for k, p in extractor.named_parameters() if p.requires_grad}
        torch.manual_seed(0)
        out = extractor(**inputs)
        grads = torch.autograd.grad(
            output_score(out["out"]), list(params.values()), allow_unused=True
        )
        results.append((out, dict(zip(params, grads, strict=True))))
    (want, want_grads), (got, got_grads) = results
    assert want.keys() == got.keys()
    for key in want:
        assert type(got[key]) is type(want[key]), key
        assert bitwise_equal(_tensors(got[key]), _tensors(want[key])), key
    assert want_grads.keys() == got_grads.keys()
    assert any(g is not None for g in want_grads.values())
    assert all(bitwise_equal(want_grads[k], got_grads[k]) for k in want_grads)


@pytest.fixture(scope="module")
def llama_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _model, ex, _inputs = _capture("llama", False)
    return fxtap.save(ex, tmp_path_factory.mktemp("llama") / "llama.fxtap")


def test_another_transformers_version_is_refused_naming_both(
    llama_file: Path, tmp_path: Path
) -> None:
    import transformers

    def edit(manifest: dict[str, Any]) -> None:
        manifest["model"]["transformers"]["version"] = "4.40.0"

    with pytest.raises(LoadError) as info:
        fxtap.load(rewrite_manifest(llama_file, target=tmp_path / "old.fxtap", edit=edit))
    message = str(info.value)
    assert "'4.40.0'" in message and transformers.__version__ in message
    assert "pip install 'transformers==4.40.0'" in message


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("class", "transformers.models.auto.modeling_auto:AutoModel", "not a Hugging Face model"),
        ("class", "os:system", "not a Hugging Face model"),
        ("attention", "kernels-community/flash-attn", "is not one of"),
        ("config", {"dict": [["auto_map", {"dict": []}]]}, "not a config key"),
        ("config", {"dict": [["__class__", 1]]}, "not a config key"),
        ("config", {"dict": [["_attn_implementation_internal", "x"]]}, "not a config key"),
        ("config", {"dict": [["to_dict", 1]]}, "names a method"),
        ("config", {"dict": [["num_labels", 10**9]]}, "names a property"),
        ("config", {"dict": [["use_return_dict", False]]}, "names a property"),
        ("config", {"dict": [["hidden_size", "big"]]}, "cannot be built|refuses it|read it back"),
        ("config", {"dict": [["vocab_size", {"tensor": "t0"}]]}, "plain data"),
        ("config", {"dict": [["dtype", "load"]]}, "not a torch dtype"),
        ("parameters", {"norm.weight": "t999"}, "not listed under tensors"),
        ("dropped", ["no_such_module"], "is not a module of LlamaModel"),
    ],
)
def test_hostile_transformers_specs_are_refused(
    llama_file: Path, tmp_path: Path, field: str, value: Any, match: str
) -> None:
    def edit(manifest: dict[str, Any]) -> None:
        spec = manifest["model"]["transformers"]
        if field == "config" and field in spec:
            spec["config"]["dict"] += value["dict"]
        else:
            spec[field] = value

    with pytest.raises(LoadError, match=match):
        fxtap.load(rewrite_manifest(llama_file, target=tmp_path / "bad.fxtap", edit=edit))


def test_a_weight_left_out_or_of_another_shape_is_refused(llama_file: Path, tmp_path: Path) -> None:
    def drop(manifest: dict[str, Any]) -> None:
        del manifest["model"]["transformers"]["parameters"]["norm.weight"]

    with pytest.raises(LoadError, match=r"holds \['norm.weight'\] but the file does not"):
        fxtap.load(rewrite_manifest(llama_file, target=tmp_path / "drop.fxtap", edit=drop))

    def swap(manifest: dict[str, Any]) -> None:
        params = manifest["model"]["transformers"]["parameters"]
        params["norm.weight"] = params["embed_tokens.weight"]

    with pytest.raises(LoadError, match="of shape"):
        fxtap.load(rewrite_manifest(llama_file, target=tmp_path / "swap.fxtap", edit=swap))


def test_a_model_changed_after_construction_is_refused_at_save(tmp_path: Path) -> None:
    """The file could not rebuild a changed attribute: save refuses rather than lose it."""
    _model, ex, _inputs = _capture("llama", False)
    ex.model.layers[0].self_attn.scaling = 2.0
    with pytest.raises(fxtap.InvalidArgumentError, match=r"layers.0.self_attn.scaling = 2.0"):
        fxtap.save(ex, tmp_path / "changed.fxtap")


def test_private_module_attributes_are_never_stored(tmp_path: Path) -> None:
    """A dict in a private attribute (transformers 5.25's ``_kernel_funcs``) saves fine and is
    not in the file; the private state torch's classes need is rebuilt on load."""

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding="same", padding_mode="reflect"), nn.ReLU())
    model[0]._kernel_funcs = {"rotary_pos_emb": object()}
    model[1]._cache = {"a": 1}
    ex = fxtap.create_feature_extractor(model, {"1": "out"})
    path = fxtap.save(ex, tmp_path / "private.fxtap")
    text = path.read_bytes()
    assert b"_kernel_funcs" not in text and b"_cache" not in text
    assert b"_reversed_padding_repeated_twice" not in text
    manifest = _manifest(path)
    for spec in manifest["modules"].values():
        assert not [k for k in spec["config"] if k.startswith("_")]
    loaded = fxtap.load(path)
    conv = loaded.get_submodule("0")
    assert conv._reversed_padding_repeated_twice == model[0]._reversed_padding_repeated_twice
    x = torch.rand(2, 3, 8, 8)
    assert bitwise_equal(loaded.eval()(x)["out"], ex.eval()(x)["out"])


# --- private state of torch and torchvision classes ---------------------------------------------


def _roundtrip_module(module: nn.Module) -> tuple[dict[str, Any], nn.Module]:
    """``module`` through the safe format's module spec: encoded, JSON, checked, built."""
    from fxtap.save._build import build_module, tensors_of
    from fxtap.save._config import Modules
    from fxtap.save._encode import Tensors, encode_module

    tensors = Tensors()
    spec = json.loads(json.dumps(encode_module(module, "m", tensors, {})))
    listed = {k: (v["parameter"], v["requires_grad"]) for k, v in tensors.info.items()}
    modules = Modules(listed, trust=False)
    modules.add_top("m", spec)
    return spec, build_module(modules.top["m"], tensors_of(listed, tensors.data), {}, trust=False)


def _private(module: nn.Module) -> dict[str, Any]:
    internals = set(vars(nn.Module()))
    return {k: v for k, v in vars(module).items() if k.startswith("_") and k not in internals}


def _private_modules() -> list[nn.Module]:
    from torchvision.models.detection import anchor_utils, retinanet, rpn, ssd, transform

    head = retinanet.RetinaNetRegressionHead(8, 2)
    head._loss_type = "giou"  # as torchvision's retinanet_resnet50_fpn_v2 sets it
    return [
        nn.Conv2d(3, 4, (3, 5), padding="same", dilation=(1, 2), padding_mode="circular"),
        nn.Conv1d(3, 4, 3, padding=2, padding_mode="reflect"),
        nn.ConvTranspose2d(3, 4, 3, padding=(1, 2)),
        nn.MultiheadAttention(8, 2, kdim=4, vdim=6),
        nn.MultiheadAttention(8, 2),
        rpn.RegionProposalNetwork(
            anchor_utils.AnchorGenerator(),
            rpn.RPNHead(8, 3),
            0.7,
            0.3,
            256,
            0.5,
            {"training": 2000, "testing": 300},
            {"training": 1000, "testing": 200},
            0.7,
        ),
        transform.GeneralizedRCNNTransform(64, 96, [0.5] * 3, [0.2] * 3, _skip_resize=True),
        head,
        anchor_utils.DefaultBoxGenerator([[2], [2, 3]], min_ratio=0.2, max_ratio=0.9),
        ssd.SSD(
            nn.Sequential(),
            anchor_utils.DefaultBoxGenerator([[2]]),
            (32, 32),
            3,
            head=nn.Identity(),
        ),
    ]


@pytest.mark.parametrize("module", _private_modules(), ids=lambda m: type(m).__name__)
def test_private_state_is_rebuilt_from_public_state(module: nn.Module) -> None:
    spec, built = _roundtrip_module(module)

    def configs(s: dict[str, Any]) -> list[str]:
        keys = list(s.get("config", {})) + list(s.get("arguments", {}))
        return keys + [k for c in s.get("modules", {}).values() if c for k in configs(c)]

    assert not [k for k in configs(spec) if k.startswith("_")]
    for path, original in module.named_modules():
        rebuilt = built.get_submodule(path)
        want, got = _private(original), _private(rebuilt)
        want.pop("_is_cn", None)  # read only while building a backbone, never by forward
        assert got.keys() == want.keys(), path
        assert all(bitwise_equal(got[k], want[k]) for k in want), path


def test_private_arguments_are_checked(tmp_path: Path) -> None:
    from torchvision.models.detection import retinanet

    spec, _ = _roundtrip_module(retinanet.RetinaNetRegressionHead(8, 2))
    assert spec["arguments"] == {"loss_type": "l1"}

    def load_with(edit: Any) -> None:
        from fxtap.save._build import build_module
        from fxtap.save._config import Modules

        bad = copy.deepcopy(spec)
        edit(bad)
        modules = Modules({}, trust=False)
        modules.add_top("m", {**bad, "parameters": {}, "modules": {}})
        build_module(modules.top["m"], {}, {}, trust=False)

    with pytest.raises(LoadError, match=r"loss_type: 'os' is not one of"):
        load_with(lambda s: s["arguments"].update(loss_type="os"))
    with pytest.raises(LoadError, match=r"unexpected \['evil'\]"):
        load_with(lambda s: s["arguments"].update(evil=1))
    with pytest.raises(LoadError, match=r"private attributes \('_loss_type'\) are never stored"):
        load_with(lambda s: s["config"].update(_loss_type="l1"))


def test_mutated_transformers_specs_load_or_raise_load_error(
    llama_file: Path, tmp_path: Path
) -> None:
    """One change anywhere in the Hugging Face spec: ``LoadError`` or an extractor, never
    another exception (seeded mutations)."""
    import random

    spec = _manifest(llama_file)["model"]["transformers"]
    paths = [p for p in json_paths(spec) if p]
    hostile = ["__class__", "x=__import__('os')", "", None, -1, 10**30, 1.5, [], {}, True]
    rng = random.Random(0)
    outcomes = {"refused": 0, "loaded": 0}
    for i in range(EXAMPLES):
        path, value = rng.choice(paths), rng.choice(hostile)

        def edit(
            manifest: dict[str, Any], path: tuple[Any, ...] = path, value: Any = value
        ) -> None:
            owner = manifest["model"]["transformers"]
            for part in path[:-1]:
                owner = owner[part]
            owner[path[-1]] = copy.deepcopy(value)

        mutated = rewrite_manifest(llama_file, target=tmp_path / f"m{i}.fxtap", edit=edit)
        try:
            loaded = fxtap.load(mutated)
        except LoadError:
            outcomes["refused"] += 1
        else:
            assert isinstance(loaded, CaptureExtractor), (path, value)
            outcomes["loaded"] += 1
    assert outcomes["refused"] > EXAMPLES // 2, outcomes


def test_a_capture_extractor_with_dropped_layers_keeps_only_their_absence(tmp_path: Path) -> None:
    """Built with example inputs and no ``:output``, the layers after the tap are ``Dropped``:
    the file holds none of their weights, and loading drops them again."""
    from fxtap.capture._reach import Dropped

    torch.manual_seed(0)
    model, inputs = build_hf("llama")
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ex = fxtap.create_feature_extractor(
            model, ["layers.0.mlp.down_proj"], tracer="fx", example_inputs=inputs
        )
    assert "layers.2" in ex.dropped
    path = fxtap.save(ex, tmp_path / "dropped.fxtap")
    stored = _manifest(path)["model"]["transformers"]
    assert "layers.2" in stored["dropped"]
    assert not [k for k in stored["parameters"] if k.startswith("layers.2.")]
    loaded = fxtap.load(path)
    assert loaded.dropped == ex.dropped
    assert all(isinstance(loaded.model.get_submodule(p), Dropped) for p in ex.dropped)
    with torch.no_grad():
        want = ex(**inputs)["layers.0.mlp.down_proj"]
        assert bitwise_equal(loaded(**inputs)["layers.0.mlp.down_proj"], want)


@pytest.mark.parametrize("key", ["num_hidden_layers", "intermediate_size", "vocab_size"])
def test_a_config_far_larger_than_the_weights_stops_early(
    llama_file: Path, tmp_path: Path, key: str
) -> None:
    """Built within a budget: the loader does not build 10**30 layers to find them missing."""

    def edit(manifest: dict[str, Any]) -> None:
        for pair in manifest["model"]["transformers"]["config"]["dict"]:
            if pair[0] == key:
                pair[1] = 10**12

    with pytest.raises(LoadError, match="far larger than the weights the file holds"):
        fxtap.load(rewrite_manifest(llama_file, target=tmp_path / "big.fxtap", edit=edit))
