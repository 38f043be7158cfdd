"""The safe loader's allowlist (``fxtap/save/_allowlist.json``) holds everything fxtap's saver emits.

The allowlist is generated: ``python tests/test_allowlist.py`` saves an extractor of every
torchvision model (and every timm model when timm is installed), collects the functions,
methods, ``getattr`` names and module classes (with their configuration and tensor names) the
saved files name, and rewrites ``fxtap/save/_allowlist.json``. For the export path it also saves
one torchvision classification model of each family and the Hugging Face configs of
tests/support/hf.py through ``tracer="export"`` and collects their ATen ops and output types, and adds the ATen ops
tagged ``torch.Tag.core``; ops that touch files, streams or global state are left out
(``EXCLUDED_OP_WORDS``), and so are backward ops and the ops tests/test_save_op_fuzz.py found
to crash the process on hostile arguments (``allowed_op``). ``python tests/test_allowlist.py
--export`` redoes only that part.
The test below re-saves a sample of models and fails if one of them emits something the
checked-in allowlist lacks; ``FXTAP_THOROUGH=1`` checks the whole zoo.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import sys
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fxtap
from fxtap.errors import InvalidArgumentError
from fxtap.save import MANIFEST, _allowlist, _schema
from fxtap.save._pack import pack
from support.crashing_ops import CRASHING
from support.standard_ops import standard_functions, standard_methods

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = (
    "resnet18",
    "mobilenet_v3_small",
    "vit_b_16",
    "swin_t",
    "convnext_tiny",
    "efficientnet_b0",
    "fasterrcnn_mobilenet_v3_large_320_fpn",  # a capture extractor: the module tree is saved
)
#: Models saved through ``tracer="export"`` by the test (the generator saves ``EXPORT_ZOO``).
EXPORT_SAMPLE = ("resnet18", "bert")
#: One torchvision classification model of each family (the families share their ops), saved
#: through ``tracer="export"`` by the generator with the Hugging Face configs of tests/support/hf.py.
EXPORT_ZOO = (
    "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s",
    "googlenet", "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small",
    "regnet_x_400mf", "regnet_y_400mf", "resnet18", "resnext50_32x4d", "shufflenet_v2_x0_5",
    "squeezenet1_0", "swin_t", "swin_v2_t", "vgg11_bn", "vit_b_16", "wide_resnet50_2",
)  # fmt: skip
#: Hugging Face models (tests/support/hf.py's configs) saved as capture extractors.
HF_ZOO = ("bert", "gpt2", "llama", "mistral", "qwen2", "t5_encoder", "t5_decoder")
HF_ZOO += ("whisper_encoder",)
USER_CODE = ("support.", "__main__")
#: Words of ATen op names never allowed: files, serialization, printing, streams, global state.
EXCLUDED_OP_WORDS = ("file", "save", "load", "print", "seed", "rng", "set_", "storage", "stream")
EXCLUDED_OP_WORDS += ("hub", "serialization", "url", "download", "system", "manual", "device_")
#: Shape and check helpers of exported graphs with dynamic dims, besides the core ops.
SYMBOLIC_OPS = (
    "aten::sym_size.int",
    "aten::sym_stride.int",
    "aten::sym_numel.default",
    "aten::_assert_scalar.default",
    "aten::sym_constrain_range.default",
    "aten::sym_constrain_range_for_size.default",
    "aten::_assert_tensor_metadata.default",
)
SYMBOLIC_FUNCTIONS = ("torch:sym_float", "torch:sym_int", "torch:sym_max", "torch:sym_min")
SYMBOLIC_FUNCTIONS += ("torch:sym_not", "torch:sym_sqrt")
#: Output structures nested inside a model's output.
BUILTIN_OUTPUT_TYPES = {
    "builtins.tuple": "builtins:tuple",
    "builtins.list": "builtins:list",
    "builtins.dict": "builtins:dict",
}
THOROUGH = os.environ.get("FXTAP_THOROUGH") == "1"


@dataclass
class Emitted:
    """What saved files name, merged over many files."""

    functions: set[str] = field(default_factory=set)
    methods: set[str] = field(default_factory=set)
    attributes: set[str] = field(default_factory=set)
    #: ``ns::name.overload`` of ATen (and other) operators
    ops: set[str] = field(default_factory=set)
    #: pytree serialized type name -> ``module:qualname``
    output_types: dict[str, str] = field(default_factory=dict)
    #: class -> (keys every instance had, keys some instance had, tensor names)
    classes: dict[str, tuple[set[str], set[str], set[str]]] = field(default_factory=dict)
    #: plain object class -> (attributes every instance had, attributes some instance had)
    objects: dict[str, tuple[set[str], set[str]]] = field(default_factory=dict)
    enums: set[str] = field(default_factory=set)
    #: Hugging Face model classes, stored as class, config and weights
    transformers: set[str] = field(default_factory=set)

    def add_manifest(self, manifest: Mapping[str, Any]) -> None:
        for nodes in manifest.get("graphs", {}).values():
            for node in nodes:
                if node["op"] == "call_function" and "op" in node["target"]:
                    namespace, name, overload = node["target"]["op"]
                    self.ops.add(f"{namespace}::{name}.{overload}")
                elif node["op"] == "call_function":
                    self.functions.add(node["target"]["function"])
                    self._add_types(node["args"])
                    if node["target"]["function"] == "builtins:getattr":
                        self.attributes.add(node["args"]["tuple"][1])
                elif node["op"] == "call_method":
                    self.methods.add(node["target"])
        for spec in manifest["modules"].values() if "modules" in manifest else ():
            self._add_module(spec)
        if "model" in manifest:  # a capture extractor's module tree and tracer options
            self._add_module(manifest["model"])
            self.functions |= set(manifest["tracer"].get("autowrap_functions", ()))

    def merge(self, other: Emitted) -> None:
        self.ops |= other.ops
        self.output_types |= other.output_types
        self.functions |= other.functions
        self.methods |= other.methods
        self.attributes |= other.attributes
        self.enums |= other.enums
        self.transformers |= other.transformers
        for cls, (req, opt) in other.objects.items():
            if cls in self.objects:
                a, b = self.objects[cls]
                self.objects[cls] = (a & req, b | opt)
            else:
                self.objects[cls] = (set(req), set(opt))
        for cls, (req, opt, names) in other.classes.items():
            if cls in self.classes:
                a, b, c = self.classes[cls]
                self.classes[cls] = (a & req, b | opt, c | names)
            else:
                self.classes[cls] = (set(req), set(opt), set(names))

    def _add_types(self, value: Any) -> None:
        """The output types of the ``{"treespec": ...}`` values in ``value``."""
        from torch.utils import _pytree as pytree

        if isinstance(value, list):
            for item in value:
                self._add_types(item)
        elif isinstance(value, dict):
            if set(value) == {"type", "context", "children"}:
                cls = pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE[value["type"]]
                self.output_types[value["type"]] = f"{cls.__module__}:{cls.__qualname__}"
            for item in value.values():
                self._add_types(item)

    def _add_module(self, spec: Mapping[str, Any]) -> None:
        if "same_as" in spec:
            return
        if "transformers" in spec:
            self.transformers.add(spec["transformers"]["class"])
            return
        keys = set(spec["config"])
        tensors = set(spec["parameters"]) | set(spec["buffers"])
        if spec["class"] in self.classes:
            required, optional, names = self.classes[spec["class"]]
            required &= keys
            optional |= keys
            names |= tensors
        else:
            self.classes[spec["class"]] = (keys, set(keys), tensors)
        for value in spec["config"].values():
            self._add_value(value)
        for child in spec["modules"].values():
            if child is not None:
                self._add_module(child)

    def _add_value(self, value: Any) -> None:
        """Objects, enums and functions a configuration value names (tagged JSON)."""
        if isinstance(value, list):
            for item in value:
                self._add_value(item)
        elif isinstance(value, dict) and len(value) == 1:
            ((tag, body),) = value.items()
            if tag == "function":
                self.functions.add(body)
            elif tag == "enum":
                self.enums.add(body["class"])
            elif tag == "object":
                keys = set(body["state"])
                if body["class"] in self.objects:
                    required, optional = self.objects[body["class"]]
                    required &= keys
                    optional |= keys
                else:
                    self.objects[body["class"]] = (keys, set(keys))
                for item in body["state"].values():
                    self._add_value(item)
            elif tag in ("tuple", "dict"):
                self._add_value(body)


def manifest_of(extractor: Any) -> dict[str, Any]:
    """The manifest ``save`` writes for ``extractor``."""
    buffer = io.BytesIO()
    pack(extractor, buffer)
    with zipfile.ZipFile(buffer) as archive:
        return json.loads(archive.read(MANIFEST))


def _every_node(model: torch.nn.Module) -> Any:
    """An extractor returning every graph node of ``model`` in both modes (so nothing is
    pruned); ``None`` where the root cannot be traced (served by the capture path: no graph)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            train, evals = fxtap.get_graph_node_names(model)
        except fxtap.TraceError:
            return None
        return fxtap.create_feature_extractor(
            model, train_return_nodes=train, eval_return_nodes=evals
        )


def torchvision_extractors(names: tuple[str, ...] | list[str]) -> Iterator[tuple[str, Any]]:
    """Every graph node of each model requested (so nothing is pruned); a capture extractor
    where the root cannot be traced (its whole module tree is saved)."""
    from support.zoo import build

    for name in names:
        extractor = _every_node(build(name))
        if extractor is not None:
            yield name, extractor


def fixture_extractors() -> Iterator[tuple[str, Any]]:
    """The tiny models of tests/support/models.py: the torch functions small user models call."""
    from support import models

    for name, cls in sorted(vars(models).items()):
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            continue
        try:
            torch.manual_seed(0)
            extractor = _every_node(cls())
        except (TypeError, fxtap.FxtapError):  # needs arguments, or is not traceable
            continue
        if isinstance(extractor, fxtap.FeatureExtractor):
            yield f"support.models:{name}", extractor


def timm_extractors() -> Iterator[tuple[str, Any]]:
    """timm models (when installed), as tests/support/zoo.py builds them."""
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        return
    from support.zoo import FIXED, FLEXIBLE, build_timm

    for name in FLEXIBLE + FIXED:
        extractor = _every_node(build_timm(name))
        if extractor is not None:
            yield f"timm:{name}", extractor


def hf_extractors(names: tuple[str, ...] = HF_ZOO) -> Iterator[tuple[str, Any]]:
    """Capture extractors of tiny transformers (when installed), built from the configs of
    tests/support/hf.py: their roots cannot be traced, so each model is saved as its class,
    config and weights."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        return
    from support.hf import HF, build_hf

    for name in names:
        torch.manual_seed(0)
        model, _inputs = build_hf(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            extractor = fxtap.create_feature_extractor(model, [HF[name][0], ":output"], tracer="fx")
        yield f"transformers:{name}", extractor


def dropped_extractors() -> Iterator[tuple[str, Any]]:
    """A detection capture extractor built with example inputs: its heads are ``Dropped``."""
    from support.zoo import build

    model = build("fasterrcnn_mobilenet_v3_large_320_fpn")
    images = [torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0]]), "labels": torch.tensor([1])}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extractor = fxtap.create_feature_extractor(
            model, ["backbone"], example_inputs=(images, targets)
        )
    assert extractor.dropped, "the probe dropped nothing"
    yield "dropped:fasterrcnn_mobilenet_v3_large_320_fpn", extractor


def none_default_extractors() -> Iterator[tuple[str, Any]]:
    """A model whose graph reads an argument that defaults to ``None``: the graph for calls
    that leave it out checks that it is ``None`` (torch.fx's ``_assert_is_none``)."""
    from support.models import OptionalState

    extractor = fxtap.create_feature_extractor(OptionalState(), ["add"])
    assert extractor.fixed_to_none, "no graph with the argument fixed to None"
    yield "fixed_to_none:OptionalState", extractor


def edit_extractors() -> Iterator[tuple[str, Any]]:
    """Models edited with each ``fxtap.edits`` module, in each of its configurations, and the
    two halves of a split (the head returns its boundary through ``dict``)."""
    from fxtap.edits import Add, Input, Project, Replace, Scale, Zero
    from support.models import TinyUNet

    edits = {
        "enc1": Zero(),
        "enc1.0": Zero(1),
        "enc1.1": Zero([0, 1], dim=-1),
        "enc2": Scale(0.5),
        "enc2.0": Scale(torch.ones(1)),
        "enc2.1": Add(torch.zeros(1)),
        "mid": Project(torch.ones(16), dim=1),
        "up2": Replace(torch.zeros(1)),
        "cat": Input("patch"),
    }
    yield "edit:TinyUNet", fxtap.edit(TinyUNet(), edits)
    head, tail = fxtap.split(TinyUNet(), "mid")
    yield "split:TinyUNet head", head
    yield "split:TinyUNet tail", tail


def audio_extractors() -> Iterator[tuple[str, Any]]:
    """torchaudio's wav2vec2 (weight_norm on its positional convolution) and Conformer, when
    installed, as tests/support/audio.py builds them; every graph node requested."""
    import importlib.util

    if importlib.util.find_spec("torchaudio") is None:
        return
    from support.audio import conformer, wav2vec2

    for name, build in (("wav2vec2", wav2vec2), ("conformer", conformer)):
        model = build()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train, evals = fxtap.get_graph_node_names(model)
            extractor = fxtap.create_feature_extractor(
                model, train_return_nodes=train, eval_return_nodes=evals
            )
        yield f"torchaudio:{name}", extractor


def export_extractors(
    names: tuple[str, ...] | list[str], *, every_node: bool = True
) -> Iterator[tuple[str, Any]]:
    """Every node (or only ``:output``) of each model through ``tracer="export"``: the Hugging
    Face configs of tests/support/hf.py by their name there, other names from torchvision (in
    64x64 inputs, else the size a model was built for); models export cannot trace are skipped."""
    from support.hf import HF, build_hf

    for name in names:
        if name in HF:
            try:
                model, inputs = build_hf(name)
            except BaseException as exc:  # pytest.skip without transformers
                if type(exc).__name__ != "Skipped":
                    raise
                continue
        else:
            from support.zoo import build

            model = build(name)
            inputs = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            extractor = _export_all(model, inputs, every_node)
            for size in (32, 224, 299) if isinstance(inputs, torch.Tensor) else ():
                if extractor is None:  # the image size the model was built for
                    extractor = _export_all(model, torch.rand(2, 3, size, size), every_node)
        print(f"export:{name}: {'saved' if extractor else 'not exportable'}", file=sys.stderr)
        if extractor is not None:
            yield f"export:{name}", extractor


def _export_all(model: torch.nn.Module, inputs: Any, every_node: bool) -> Any:
    def names(training: bool) -> list[str]:
        if not every_node:
            return [":output"]
        traced = fxtap.trace(model, training=training, tracer="export", example_inputs=inputs)
        return [*traced.names.values(), ":output"]

    try:
        return fxtap.create_feature_extractor(
            model,
            train_return_nodes=names(True),
            eval_return_nodes=names(False),
            tracer="export",
            example_inputs=inputs,
        )
    except (fxtap.FxtapError, RuntimeError):
        return None


def core_ops() -> set[str]:
    """The ATen ops tagged ``torch.Tag.core``."""
    found = set()
    for name in dir(torch.ops.aten):
        packet = getattr(torch.ops.aten, name, None)
        if isinstance(packet, torch._ops.OpOverloadPacket):
            for overload in packet.overloads():
                if torch.Tag.core in getattr(packet, overload).tags:
                    found.add(f"aten::{name}.{overload}")
    return found


def allowed_op(key: str) -> bool:
    """False for ops whose name says they touch files, streams or global state, for backward
    ops (they trust the indices and sizes a forward op computed: hostile ones crash the
    process) and for ops tests/test_save_op_fuzz.py found to crash."""
    if "backward" in key or key in CRASHING:
        return False
    return not any(word in key.lower() for word in EXCLUDED_OP_WORDS)


def collect(extractors: Iterator[tuple[str, Any]]) -> Emitted:
    """What the saver emits for ``extractors``, but the test suite's own functions and classes
    (user code, which needs ``trust=True``)."""
    emitted = Emitted()
    for name, extractor in extractors:
        try:
            emitted.add_manifest(manifest_of(extractor))
        except InvalidArgumentError as exc:  # not describable in the safe format
            print(f"skipped {name}: {exc}", file=sys.stderr)
    emitted.functions = {f for f in emitted.functions if not f.startswith(USER_CODE)}
    emitted.classes = {c: v for c, v in emitted.classes.items() if not c.startswith(USER_CODE)}
    emitted.objects = {c: v for c, v in emitted.objects.items() if not c.startswith(USER_CODE)}
    emitted.enums = {c for c in emitted.enums if not c.startswith(USER_CODE)}
    return emitted


def render(emitted: Emitted) -> str:
    """The text of ``fxtap/save/_allowlist.json``."""
    data = {
        "functions": sorted(emitted.functions),
        "ops": sorted(emitted.ops),
        "output_types": dict(sorted(emitted.output_types.items())),
        "methods": sorted(emitted.methods),
        "attributes": sorted(emitted.attributes),
        "modules": {
            cls: {"config": sorted(req), "optional": sorted(opt - req), "tensors": sorted(names)}
            for cls, (req, opt, names) in sorted(emitted.classes.items())
        },
        "objects": {
            cls: {"config": sorted(req), "optional": sorted(opt - req)}
            for cls, (req, opt) in sorted(emitted.objects.items())
        },
        "enums": sorted(emitted.enums),
        "transformers": sorted(emitted.transformers),
    }
    return json.dumps(data, indent=1) + "\n"


def missing(emitted: Emitted) -> list[str]:
    """What ``emitted`` names that the checked-in allowlist lacks."""
    gaps = [f"function {f}" for f in sorted(emitted.functions - _allowlist.FUNCTIONS)]
    gaps += [f"op {o}" for o in sorted(emitted.ops - set(_allowlist.OPS)) if allowed_op(o)]
    gaps += [
        f"output type {t}"
        for t in sorted(emitted.output_types.keys() - _allowlist.OUTPUT_TYPES.keys())
    ]
    gaps += [f"method {m}" for m in sorted(emitted.methods - _allowlist.METHODS)]
    gaps += [f"getattr name {a}" for a in sorted(emitted.attributes - _allowlist.ATTRIBUTES)]
    gaps += [f"enum {e}" for e in sorted(emitted.enums - _allowlist.ENUMS)]
    gaps += [f"transformers {c}" for c in sorted(emitted.transformers - _allowlist.TRANSFORMERS)]
    for cls, (req, opt) in sorted(emitted.objects.items()):
        if cls not in _allowlist.OBJECTS:
            gaps.append(f"object class {cls}")
            continue
        allowed_req, allowed_opt = _allowlist.OBJECTS[cls]
        gaps += [f"{cls} attribute {k}" for k in sorted(opt - set(allowed_req) - set(allowed_opt))]
        gaps += [f"{cls} always has attribute {k}" for k in sorted(set(allowed_req) - req)]
    for cls, (req, opt, names) in sorted(emitted.classes.items()):
        if cls not in _allowlist.MODULES:
            gaps.append(f"module class {cls}")
            continue
        allowed_req, allowed_opt, allowed_names = _allowlist.MODULES[cls]
        gaps += [f"{cls} config {k}" for k in sorted(opt - set(allowed_req) - set(allowed_opt))]
        gaps += [f"{cls} always has config {k}" for k in sorted(set(allowed_req) - req)]
        gaps += [f"{cls} tensor {k}" for k in sorted(names - set(allowed_names))]
    return gaps


def test_allowlist_holds_the_edit_modules() -> None:
    gaps = missing(collect(edit_extractors()))
    assert not gaps, f"regenerate with: python tests/test_allowlist.py ({gaps})"


def test_allowlist_holds_what_the_saver_emits_for_a_sample() -> None:
    names = torchvision.models.list_models() if THOROUGH else list(SAMPLE)
    emitted = collect(torchvision_extractors(names))
    emitted.merge(collect(fixture_extractors()))
    if THOROUGH:
        emitted.merge(collect(timm_extractors()))
        emitted.merge(collect(hf_extractors()))
        emitted.merge(collect(audio_extractors()))
    else:
        emitted.merge(collect(hf_extractors(("llama",))))
    emitted.merge(collect(dropped_extractors()))
    emitted.merge(collect(none_default_extractors()))
    assert emitted.functions and emitted.classes, "nothing was collected"
    gaps = missing(emitted)
    assert not gaps, f"regenerate with: python tests/test_allowlist.py; missing: {gaps}"


def test_allowlist_holds_what_the_saver_emits_for_exported_models() -> None:
    emitted = collect(export_extractors(list(EXPORT_SAMPLE), every_node=THOROUGH))
    assert emitted.ops and "fxtap.trace._export_inputs:check_shapes" in emitted.functions
    gaps = missing(emitted)
    assert not gaps, f"regenerate with: python tests/test_allowlist.py --export; missing: {gaps}"


def test_core_and_symbolic_ops_are_allowed_but_none_that_touch_files_or_state() -> None:
    allowed = set(_allowlist.OPS)
    wanted = {o for o in core_ops() | set(SYMBOLIC_OPS) if allowed_op(o)}
    assert wanted and wanted <= allowed, sorted(wanted - allowed)[:5]
    assert "aten::_local_scalar_dense.default" in allowed
    assert not {"aten::from_file.default", "aten::_print.default"} & allowed
    assert all(allowed_op(o) for o in allowed), [o for o in allowed if not allowed_op(o)]
    for key, (namespace, name, overload) in _allowlist.OPS.items():
        assert all(_schema.NAME.fullmatch(p) for p in (namespace, name, overload)), key
        op = getattr(getattr(getattr(torch.ops, namespace), name), overload)
        assert isinstance(op, torch._ops.OpOverload), key
    assert set(SYMBOLIC_FUNCTIONS) <= _allowlist.FUNCTIONS
    for name, path in _allowlist.OUTPUT_TYPES.items():
        assert _allowlist.resolve(*path.partition(":")[::2]) is not None, path
        assert name.rpartition(".")[2] == path.rpartition(":")[2].rpartition(".")[2], name


def test_standard_ops_are_allowed() -> None:
    """Plain tensor math a user model writes (``x.relu()``, ``F.silu``) loads without trust."""
    assert standard_functions() <= _allowlist.FUNCTIONS
    assert standard_methods() <= _allowlist.METHODS


def test_module_configuration_keys_are_set_by_the_class() -> None:
    """Every configuration key is a constructor argument or set on instances by __init__."""
    import importlib

    for path, (required, optional, _names) in _allowlist.MODULES.items():
        module_name, _, qualname = path.partition(":")
        cls = getattr(importlib.import_module(module_name), qualname)
        assert isinstance(cls, type) and issubclass(cls, torch.nn.Module), path
        internals = set(dir(torch.nn.Module)) | set(vars(torch.nn.Module()))
        for key in (*required, *optional):
            assert key.isidentifier() and not key.startswith("__"), (path, key)
            assert key not in internals, f"{path} config {key!r} shadows nn.Module"
            # a class-level default that instances override (transformers' ``_tp_plan``) is
            # plain data; a method, property or other descriptor must never be shadowed
            default = inspect.getattr_static(cls, key, None)
            assert not (callable(default) or hasattr(type(default), "__get__")), (
                f"{path} config {key!r} shadows {type(default).__name__} {key!r} of the class"
            )
        assert not set(required) & set(optional), path


def test_transformers_classes_are_models_that_rebuild_from_a_config() -> None:
    transformers = pytest.importorskip("transformers")
    import importlib

    assert _allowlist.TRANSFORMERS
    for path in _allowlist.TRANSFORMERS:
        module_name, _, qualname = path.partition(":")
        assert module_name.startswith("transformers.models."), path
        cls = getattr(importlib.import_module(module_name), qualname)
        assert issubclass(cls, transformers.PreTrainedModel) and cls.config_class, path


def test_helper_objects_are_plain_and_their_attributes_shadow_no_method() -> None:
    """Objects in configurations are built with ``cls.__new__`` and given their attributes."""
    import enum
    import importlib

    for path, (required, optional) in _allowlist.OBJECTS.items():
        module_name, _, qualname = path.partition(":")
        cls = getattr(importlib.import_module(module_name), qualname)
        assert isinstance(cls, type) and not issubclass(cls, (torch.nn.Module, enum.Enum)), path
        assert cls.__new__ is object.__new__, f"{path} has its own __new__"
        for key in (*required, *optional):
            assert key.isidentifier() and not key.startswith("__"), (path, key)
            default = inspect.getattr_static(cls, key, None)
            assert not (callable(default) or hasattr(type(default), "__get__")), (path, key)
    for path in _allowlist.ENUMS:
        module_name, _, qualname = path.partition(":")
        assert issubclass(getattr(importlib.import_module(module_name), qualname), enum.Enum)


def test_nothing_that_reads_files_or_runs_code_is_allowed() -> None:
    """The generated allowlist holds no code runners, file or network readers, or dunders."""
    forbidden = {"builtins:eval", "builtins:exec", "builtins:compile", "builtins:open"}
    forbidden |= {"builtins:__import__", "builtins:setattr", "builtins:delattr"}
    forbidden |= {"operator:attrgetter", "operator:methodcaller", "torch:load", "torch:from_file"}
    assert not forbidden & _allowlist.FUNCTIONS
    words = ("load", "save", "hub", "serialization", "file", "url", "download", "system")
    names = (*_allowlist.FUNCTIONS, *_allowlist.METHODS, *_allowlist.MODULES)
    for name in (*names, *_allowlist.OBJECTS, *_allowlist.ENUMS, *_allowlist.OUTPUT_TYPES.values()):
        assert not any(w in name.lower() for w in words), name
        assert "__" not in name, name
        assert name.count(":") <= 1, name
    assert all(_schema.NAME.fullmatch(m) and not m.startswith("_") for m in _allowlist.METHODS)
    assert all(_schema.NAME.fullmatch(a) and not a.startswith("_") for a in _allowlist.ATTRIBUTES)


def test_every_allowed_name_is_plain_ascii() -> None:
    """What the allowlist names passes the loader's one name rule (ops by ASCII shape only:
    ATen names dunder ops such as ``aten::__and__.Tensor``)."""
    for path, (required, optional, names) in _allowlist.MODULES.items():
        for key in (*required, *optional, *names):
            assert _schema.name(key, path) == key
        assert all(_schema.NAME.fullmatch(part) for part in path.replace(":", ".").split(".")), path
    for path, (required, optional) in _allowlist.OBJECTS.items():
        for key in (*required, *optional):
            assert _schema.name(key, path) == key
    for key, parts in _allowlist.OPS.items():
        assert all(_schema.NAME.fullmatch(part) for part in parts), key


def export_emitted() -> Emitted:
    """The export path's part: the zoo through ``tracer="export"``, core and symbolic ops."""
    from support.hf import HF

    emitted = collect(export_extractors([*EXPORT_ZOO, *sorted(HF)], every_node=False))
    emitted.ops = {o for o in emitted.ops | core_ops() | set(SYMBOLIC_OPS) if allowed_op(o)}
    emitted.functions |= set(SYMBOLIC_FUNCTIONS)
    emitted.output_types |= BUILTIN_OUTPUT_TYPES
    return emitted


def main(argv: list[str] | None = None) -> None:
    """Regenerate ``fxtap/save/_allowlist.json`` from the whole torchvision (and timm) zoo;
    ``--export``: only the export path's part, the rest kept as it is."""
    torch.set_num_threads(1)
    if "--export" in (sys.argv[1:] if argv is None else argv):
        emitted = Emitted(
            functions=set(_allowlist.FUNCTIONS),
            methods=set(_allowlist.METHODS),
            attributes=set(_allowlist.ATTRIBUTES),
            classes={
                cls: (set(req), set(req) | set(opt), set(names))
                for cls, (req, opt, names) in _allowlist.MODULES.items()
            },
            objects={
                cls: (set(req), set(req) | set(opt))
                for cls, (req, opt) in _allowlist.OBJECTS.items()
            },
            enums=set(_allowlist.ENUMS),
            transformers=set(_allowlist.TRANSFORMERS),
        )
    else:
        emitted = collect(torchvision_extractors(torchvision.models.list_models()))
        emitted.merge(collect(fixture_extractors()))
        emitted.merge(collect(timm_extractors()))
        emitted.merge(collect(hf_extractors()))
        emitted.merge(collect(audio_extractors()))
        emitted.merge(collect(dropped_extractors()))
        emitted.merge(collect(edit_extractors()))
        emitted.merge(collect(none_default_extractors()))
        emitted.functions |= standard_functions()
        emitted.methods |= standard_methods()
    emitted.merge(export_emitted())
    _allowlist.PATH.write_text(render(emitted), encoding="utf-8")


if __name__ == "__main__":
    main()
