"""The safe loader's allowlist (``fxtap/save/_allowlist.json``) holds everything fxtap's saver emits.

The allowlist is generated: ``python tests/test_allowlist.py`` saves an extractor of every
torchvision model (and every timm model when timm is installed), collects the functions,
methods, ``getattr`` names and module classes (with their configuration and tensor names) the
saved files name, and rewrites ``fxtap/save/_allowlist.json``. The test below re-saves a sample of
models and fails if one of them emits something the checked-in allowlist lacks;
``FXTAP_THOROUGH=1`` checks the whole zoo.
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

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fxtap
from fxtap.errors import InvalidArgumentError
from fxtap.save import MANIFEST, _allowlist
from fxtap.save._pack import pack
from tests.standard_ops import standard_functions, standard_methods

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
USER_CODE = ("tests.", "__main__")
THOROUGH = os.environ.get("FXTAP_THOROUGH") == "1"


@dataclass
class Emitted:
    """What saved files name, merged over many files."""

    functions: set[str] = field(default_factory=set)
    methods: set[str] = field(default_factory=set)
    attributes: set[str] = field(default_factory=set)
    #: class -> (keys every instance had, keys some instance had, tensor names)
    classes: dict[str, tuple[set[str], set[str], set[str]]] = field(default_factory=dict)
    #: plain object class -> (attributes every instance had, attributes some instance had)
    objects: dict[str, tuple[set[str], set[str]]] = field(default_factory=dict)
    enums: set[str] = field(default_factory=set)

    def add_manifest(self, manifest: Mapping[str, Any]) -> None:
        for nodes in manifest.get("graphs", {}).values():
            for node in nodes:
                if node["op"] == "call_function":
                    self.functions.add(node["target"]["function"])
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
        self.functions |= other.functions
        self.methods |= other.methods
        self.attributes |= other.attributes
        self.enums |= other.enums
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

    def _add_module(self, spec: Mapping[str, Any]) -> None:
        if "same_as" in spec:
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


def torchvision_extractors(names: tuple[str, ...] | list[str]) -> Iterator[tuple[str, Any]]:
    """Every graph node of each model requested (so nothing is pruned); a capture extractor
    where the root cannot be traced (its whole module tree is saved)."""
    from tests.test_zoo import build

    for name in names:
        model = build(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                train, evals = fxtap.get_graph_node_names(model)
            except fxtap.TraceError:
                continue  # served by the capture path: no graph to save
            extractor = fxtap.create_feature_extractor(
                model, train_return_nodes=train, eval_return_nodes=evals
            )
        yield name, extractor


def fixture_extractors() -> Iterator[tuple[str, Any]]:
    """The tiny models of tests/models.py: the torch functions small user models call."""
    from tests import models

    for name, cls in sorted(vars(models).items()):
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            continue
        try:
            torch.manual_seed(0)
            model = cls()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                train, evals = fxtap.get_graph_node_names(model)
                extractor = fxtap.create_feature_extractor(
                    model, train_return_nodes=train, eval_return_nodes=evals
                )
        except (TypeError, fxtap.FxtapError):  # needs arguments, or is not traceable
            continue
        if isinstance(extractor, fxtap.FeatureExtractor):
            yield f"tests.models:{name}", extractor


def timm_extractors() -> Iterator[tuple[str, Any]]:
    """timm models (when installed), as tests/test_zoo_timm.py builds them."""
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        return
    from tests.test_zoo_timm import FIXED, FLEXIBLE
    from tests.test_zoo_timm import build as build_timm

    for name in FLEXIBLE + FIXED:
        model = build_timm(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                train, evals = fxtap.get_graph_node_names(model)
            except fxtap.TraceError:
                continue
            extractor = fxtap.create_feature_extractor(
                model, train_return_nodes=train, eval_return_nodes=evals
            )
        yield f"timm:{name}", extractor


def hf_extractors() -> Iterator[tuple[str, Any]]:
    """Capture extractors of tiny transformers (when installed), as tests/test_capture_hf.py
    builds them: their roots cannot be traced, so their module trees and configs are saved."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        return
    from tests.test_capture_hf import CASES, _model

    for name, (_stack, path) in CASES.items():
        torch.manual_seed(0)
        model = _model(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            extractor = fxtap.create_feature_extractor(model, [path, ":output"])
        yield f"transformers:{name}", extractor


def dropped_extractors() -> Iterator[tuple[str, Any]]:
    """A detection capture extractor built with example inputs: its heads are ``Dropped``."""
    from tests.test_zoo import build

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


def audio_extractors() -> Iterator[tuple[str, Any]]:
    """torchaudio's wav2vec2 (weight_norm on its positional convolution) and Conformer, when
    installed, as tests/test_zoo_audio.py builds them; every graph node requested."""
    import importlib.util

    if importlib.util.find_spec("torchaudio") is None:
        return
    from tests.test_zoo_audio import conformer, wav2vec2

    for name, build in (("wav2vec2", wav2vec2), ("conformer", conformer)):
        model = build()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train, evals = fxtap.get_graph_node_names(model)
            extractor = fxtap.create_feature_extractor(
                model, train_return_nodes=train, eval_return_nodes=evals
            )
        yield f"torchaudio:{name}", extractor


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
    }
    return json.dumps(data, indent=1) + "\n"


def missing(emitted: Emitted) -> list[str]:
    """What ``emitted`` names that the checked-in allowlist lacks."""
    gaps = [f"function {f}" for f in sorted(emitted.functions - _allowlist.FUNCTIONS)]
    gaps += [f"method {m}" for m in sorted(emitted.methods - _allowlist.METHODS)]
    gaps += [f"getattr name {a}" for a in sorted(emitted.attributes - _allowlist.ATTRIBUTES)]
    gaps += [f"enum {e}" for e in sorted(emitted.enums - _allowlist.ENUMS)]
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


def test_allowlist_holds_what_the_saver_emits_for_a_sample() -> None:
    names = torchvision.models.list_models() if THOROUGH else list(SAMPLE)
    emitted = collect(torchvision_extractors(names))
    emitted.merge(collect(fixture_extractors()))
    if THOROUGH:
        emitted.merge(collect(timm_extractors()))
        emitted.merge(collect(hf_extractors()))
        emitted.merge(collect(audio_extractors()))
    emitted.merge(collect(dropped_extractors()))
    assert emitted.functions and emitted.classes, "nothing was collected"
    gaps = missing(emitted)
    assert not gaps, f"regenerate with: python tests/test_allowlist.py; missing: {gaps}"


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
    for name in (*names, *_allowlist.OBJECTS, *_allowlist.ENUMS):
        assert not any(w in name.lower() for w in words), name
        assert "__" not in name, name
        assert name.count(":") <= 1, name
    assert all(m.isidentifier() and not m.startswith("_") for m in _allowlist.METHODS)
    assert all(a.isidentifier() and not a.startswith("_") for a in _allowlist.ATTRIBUTES)


def main() -> None:
    """Regenerate ``fxtap/save/_allowlist.json`` from the whole torchvision (and timm) zoo."""
    torch.set_num_threads(1)
    emitted = collect(torchvision_extractors(torchvision.models.list_models()))
    emitted.merge(collect(fixture_extractors()))
    emitted.merge(collect(timm_extractors()))
    emitted.merge(collect(hf_extractors()))
    emitted.merge(collect(audio_extractors()))
    emitted.merge(collect(dropped_extractors()))
    emitted.functions |= standard_functions()
    emitted.methods |= standard_methods()
    _allowlist.PATH.write_text(render(emitted), encoding="utf-8")


if __name__ == "__main__":
    main()
