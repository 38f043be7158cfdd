"""Module configuration values beyond plain data: check them (schema) and build them (load).

A module's configuration may hold tensors that are not parameters or buffers (anchor
generators' cached anchors), members of allowlisted enums, allowlisted functions
(``box_similarity=box_iou``) and plain helper objects of allowlisted classes (torchvision's
``BoxCoder`` and ``Matcher``): class path plus attributes, created with ``cls.__new__`` and
given their attributes, never by running their constructor. ``parametrized`` modules are
checked here too: their ``parametrizations`` child must be exactly what torch builds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fxtap.errors import LoadError
from fxtap.save import _allowlist
from fxtap.save._hf import TAG, TransformersSpec, check_transformers
from fxtap.save._schema import (
    MAX_MODULES,
    ModuleSpec,
    as_bool,
    as_list,
    as_object,
    as_string,
    as_strings,
    check_keys,
    closest,
    decode,
    dotted_path,
    identifier,
    member_name,
    no_nodes,
    path_part,
    prefixes,
)

__all__ = [
    "MODULE_DICT",
    "PARAMETRIZATION_LIST",
    "EnumRef",
    "FunctionRef",
    "Modules",
    "ObjectSpec",
    "TensorRef",
    "build_value",
    "check_parametrized",
    "check_value",
]

MODULE_DICT = "torch.nn.modules.container:ModuleDict"
PARAMETRIZATION_LIST = "torch.nn.utils.parametrize:ParametrizationList"
_MAX_TENSORS = 64
_MODULE_KEYS = frozenset(
    {"class", "training", "config", "parameters", "buffers", "non_persistent", "modules"}
)


@dataclass(frozen=True)
class TensorRef:
    """A stored tensor, by key."""

    key: str


@dataclass(frozen=True)
class EnumRef:
    """A member of an allowlisted enum."""

    cls: str
    name: str


@dataclass(frozen=True)
class FunctionRef:
    """An allowlisted function, by ``module:name``."""

    path: str


@dataclass(frozen=True)
class ObjectSpec:
    """A plain object of an allowlisted class: its attributes, decoded."""

    cls: str
    state: dict[str, Any]


def check_value(value: Any, where: str, *, tensor: Callable[[Any, str], str], trust: bool) -> Any:
    """Decode one configuration value; ``tensor(ref, where)`` checks a tensor key."""

    def inner(v: Any, w: str) -> Any:
        if not (isinstance(v, dict) and len(v) == 1):
            return decode(v, w, inner)
        ((tag, body),) = v.items()
        if tag == "tensor":
            return TensorRef(tensor(body, w))
        if tag in ("set", "frozenset"):
            items = as_list(body, w)
            if not all(isinstance(v, (bool, int, float, str, type(None))) for v in items):
                raise LoadError(f"{w}: a set holds plain values only")
            return set(items) if tag == "set" else frozenset(items)
        if tag == "function":
            path = as_string(body, w)
            _allowed(path, _allowlist.FUNCTIONS, "function", w, trust=trust)
            return FunctionRef(path)
        if tag == "enum":
            check_keys(as_object(body, w), {"class", "name"}, None, w)
            cls = as_string(body["class"], f"{w}.class")
            _allowed(cls, _allowlist.ENUMS, "enum", w, trust=trust)
            return EnumRef(cls, identifier(body["name"], f"{w}.name"))
        if tag == "object":
            check_keys(as_object(body, w), {"class", "state"}, None, w)
            cls = as_string(body["class"], f"{w}.class")
            _allowed(cls, _allowlist.OBJECTS, "object class", w, trust=trust)
            required, optional = _allowlist.OBJECTS.get(cls, ((), ()))
            state = {}
            for key, item in as_object(body["state"], f"{w}.state").items():
                field = f"{w}.state.{key}"
                identifier(key, field)
                if cls in _allowlist.OBJECTS and key not in required and key not in optional:
                    raise LoadError(f"{field}: {cls} holds no attribute {key!r:.80}")
                state[key] = inner(item, field)
            absent = [k for k in required if k not in state]
            if absent:
                raise LoadError(f"{w}.state: {cls} needs {absent[:3]}")
            return ObjectSpec(cls, state)
        return decode(v, w, inner)

    return inner(value, where)


def check_parametrized(spec: ModuleSpec, where: str) -> None:
    """A parametrized module: ``parametrizations`` is a ``ModuleDict`` of
    ``ParametrizationList``, each holding its originals and at least one parametrization."""
    holder = spec.children.get("parametrizations")
    if not isinstance(holder, ModuleSpec) or holder.cls != MODULE_DICT or not holder.children:
        raise LoadError(
            f"{where}.modules.parametrizations: a parametrized module holds a ModuleDict"
        )
    own = {*spec.config, *spec.parameters, *spec.buffers, *spec.children}
    for name, plist in holder.children.items():
        field = f"{where}.modules.parametrizations.modules.{name}"
        identifier(name, field)
        if name in own:
            raise LoadError(f"{field}: {name!r} is stored twice")
        if not isinstance(plist, ModuleSpec) or plist.cls != PARAMETRIZATION_LIST:
            raise LoadError(f"{field}: expected a {PARAMETRIZATION_LIST}")
        is_tensor, count = plist.config.get("is_tensor"), plist.config.get("ntensors")
        if not isinstance(is_tensor, bool) or type(count) is not int:
            raise LoadError(f"{field}.config: is_tensor is a bool and ntensors an int")
        if not (1 <= count <= _MAX_TENSORS) or (is_tensor and count != 1):
            raise LoadError(f"{field}.config.ntensors: {count} does not fit is_tensor={is_tensor}")
        if not isinstance(plist.config.get("unsafe"), bool):
            raise LoadError(f"{field}.config.unsafe: expected true or false")
        expected = {"original"} if is_tensor else {f"original{i}" for i in range(count)}
        held = {k for k, v in {**plist.parameters, **plist.buffers}.items() if v is not None}
        if held != expected:
            raise LoadError(f"{field}: holds the tensors {sorted(held)}, not {sorted(expected)}")
        steps = list(plist.children)
        if not steps or steps != [str(i) for i in range(len(steps))]:
            raise LoadError(f"{field}.modules: the parametrizations are named 0, 1, ...")
        if any(child is None for child in plist.children.values()):
            raise LoadError(f"{field}.modules: a parametrization is missing")


# --- module specs -----------------------------------------------------------------------------


class Modules:
    """Checks module specs, recording every module path and tensor path they define."""

    def __init__(self, tensors: Mapping[str, tuple[bool, bool]], *, trust: bool) -> None:
        self.tensors = tensors
        self.trust = trust
        self.top: dict[str, ModuleSpec | TransformersSpec | str] = {}
        self._paths: set[str] = set()
        self._finished: set[str] = set()
        self._containers: set[str] = set()  # proper prefixes of the stored paths
        self._tensor_paths: set[str] = set()

    @property
    def paths(self) -> frozenset[str]:
        """The stored (top-level) module paths: built once per call, not once per module."""
        return frozenset(self.top)

    @property
    def tensor_paths(self) -> frozenset[str]:
        return frozenset(self._tensor_paths)

    def add_top(self, path: str, spec: Any, where: str | None = None) -> None:
        where = where or f"modules.{path}"
        dotted_path(path, where, top_level=True)
        for prefix in prefixes(path):
            if prefix in self._paths:
                raise LoadError(f"{where}: it lies inside the stored module {prefix!r}")
        if path in self._containers:
            raise LoadError(f"{where}: another stored module lies inside it")
        self._containers.update(prefixes(path))
        self.top[path] = self._module(spec, path, where)

    def tensor(self, ref: Any, where: str, *, parameter: bool | None) -> str:
        ref = as_string(ref, where)
        if ref not in self.tensors:
            raise LoadError(f"{where}: tensor {ref!r:.40} is not listed under tensors")
        if parameter is not None and self.tensors[ref][0] != parameter:
            kind = "a parameter" if parameter else "a buffer"
            raise LoadError(f"{where}: tensor {ref!r} is not stored as {kind}")
        return ref

    def check_attributes(self, attributes: Mapping[str, Any]) -> None:
        owners = {p for path in attributes for p in prefixes(path)}
        for path in attributes:
            if path in self._paths or any(p in self._paths for p in prefixes(path)):
                raise LoadError(f"attributes.{path}: it lies inside a stored module")
            if path in owners:
                raise LoadError(f"attributes.{path}: another tensor attribute lies inside it")
            self._tensor_paths.add(path)
        for path in self._paths:
            if any(p in attributes for p in prefixes(path)):
                raise LoadError(f"modules.{path}: it lies inside the tensor attribute")

    def _transformers(self, spec: dict[str, Any], path: str, where: str) -> TransformersSpec:
        """A Hugging Face model stored as its config: its tensors are its own."""
        check_keys(spec, {TAG}, None, where)
        model = check_transformers(
            spec[TAG], path, f"{where}.{TAG}", self._model_tensor, trust=self.trust
        )
        self._tensor_paths.update(f"{path}.{name}" for name in model.parameters)
        self._tensor_paths.update(f"{path}.{name}" for name in model.buffers)
        self._finished.add(path)
        return model

    def _config(self, raw: Any, cls: str, allowed: Any, where: str) -> dict[str, Any]:
        """A module's stored attributes: public, known to its class when it is allowlisted."""
        required, optional, _ = allowed or ((), (), ())
        config = {}
        for key, value in as_object(raw, f"{where}.config").items():
            field = f"{where}.config.{key}"
            if isinstance(key, str) and key.startswith("_"):
                raise LoadError(f"{field}: private attributes ({key!r:.80}) are never stored")
            if allowed is not None and key not in required and key not in optional:
                raise LoadError(f"{field}: {cls} holds no attribute {key!r:.80}")
            if allowed is None:
                member_name(key, field)
            config[key] = check_value(value, field, tensor=self._config_tensor, trust=self.trust)
        return config

    def _module(self, raw: Any, path: str, where: str) -> ModuleSpec | TransformersSpec | str:
        spec = as_object(raw, where)
        self._paths.add(path)
        if len(self._paths) > MAX_MODULES:
            raise LoadError(f"{where}: the file holds more than {MAX_MODULES} modules")
        if TAG in spec:
            return self._transformers(spec, path, where)
        if "same_as" in spec:
            check_keys(spec, {"same_as"}, None, where)
            other = as_string(spec["same_as"], f"{where}.same_as")
            # a shared module must be complete before it is named again: no cycles
            if other not in self._finished:
                raise LoadError(
                    f"{where}.same_as: {other!r:.80} is not a module stored before this one "
                    "(a module cannot contain itself)"
                )
            return other
        check_keys(spec, _MODULE_KEYS, _MODULE_KEYS | {"parametrized", "arguments"}, where)
        cls = as_string(spec["class"], f"{where}.class")
        allowed = _allowlist.MODULES.get(cls)
        if allowed is None and not self.trust:
            raise LoadError(
                f"{where}.class: it uses module class {cls!r:.80}, which the safe loader does "
                f"not allow{closest(cls, _allowlist.MODULES)}. Pass trust=True (--trust) only "
                "if you trust the file and that package"
            )
        required, _, tensor_names = allowed or ((), (), ())
        config = self._config(spec["config"], cls, allowed, where)
        absent = [k for k in required if k not in config]
        if absent:
            raise LoadError(f"{where}.config: {cls} needs {absent[:3]}")
        state: dict[str, dict[str, str | None]] = {}
        for kind in ("parameters", "buffers"):
            state[kind] = {}
            for name, ref in as_object(spec[kind], f"{where}.{kind}").items():
                field = f"{where}.{kind}.{name}"
                if allowed is not None and name not in tensor_names:
                    raise LoadError(f"{field}: {cls} holds no tensor {name!r:.80}")
                member_name(name, field)
                if name in config or name in state.get("parameters", {}):
                    raise LoadError(f"{field}: {name!r} is stored twice")
                state[kind][name] = (
                    None if ref is None else self.tensor(ref, field, parameter=kind == "parameters")
                )
                self._tensor_paths.add(f"{path}.{name}")
        non_persistent = as_strings(spec["non_persistent"], f"{where}.non_persistent")
        if not set(non_persistent) <= set(state["buffers"]):
            raise LoadError(f"{where}.non_persistent: names a buffer the module does not hold")
        children: dict[str, ModuleSpec | TransformersSpec | str | None] = {}
        for name, child in as_object(spec["modules"], f"{where}.modules").items():
            field = f"{where}.modules.{name}"
            path_part(name, field)
            if name in config or name in state["parameters"] or name in state["buffers"]:
                raise LoadError(f"{field}: {name!r} is stored twice")
            child_path = f"{path}.{name}"
            children[name] = None if child is None else self._module(child, child_path, field)
        self._finished.add(path)
        built = ModuleSpec(
            path=path,
            cls=cls,
            training=as_bool(spec["training"], f"{where}.training"),
            config=config,
            parameters=state["parameters"],
            buffers=state["buffers"],
            non_persistent=tuple(non_persistent),
            children=children,
            parametrized=as_bool(spec.get("parametrized", False), f"{where}.parametrized"),
            arguments={
                key: no_nodes(value, f"{where}.arguments.{key}")
                for key, value in as_object(spec.get("arguments", {}), f"{where}.arguments").items()
            },
        )
        if built.parametrized:
            check_parametrized(built, where)
        return built

    def _model_tensor(self, ref: Any, where: str, parameter: bool) -> str:
        return self.tensor(ref, where, parameter=parameter)

    def _config_tensor(self, ref: Any, where: str) -> str:
        return self.tensor(ref, where, parameter=False)


# --- building ---------------------------------------------------------------------------------


def build_value(
    value: Any,
    tensors: Mapping[str, torch.Tensor],
    resolve: Callable[[str, str], Any],
) -> Any:
    """The value a checked configuration entry describes; ``resolve(path, kind)`` gives the
    class or function an allowlisted (or trusted) path names."""
    if isinstance(value, TensorRef):
        return tensors[value.key]
    if isinstance(value, FunctionRef):
        return resolve(value.path, "function")
    if isinstance(value, EnumRef):
        cls = resolve(value.cls, "enum")
        member = cls.__members__.get(value.name)
        if member is None:
            raise LoadError(f"{value.name!r} is not a member of {value.cls}")
        return member
    if isinstance(value, ObjectSpec):
        cls = resolve(value.cls, "object")
        obj = cls.__new__(cls)
        for key, item in value.state.items():
            object.__setattr__(obj, key, build_value(item, tensors, resolve))
        return obj
    if isinstance(value, torch.Size):
        return value
    if isinstance(value, (list, tuple)):
        items = [build_value(v, tensors, resolve) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        return {k: build_value(v, tensors, resolve) for k, v in value.items()}
    return value


def _allowed(path: str, pool: Any, kind: str, where: str, *, trust: bool) -> None:
    if path not in pool and not trust:
        raise LoadError(
            f"{where}: it names the {kind} {path!r:.80}, which the safe loader does not "
            f"allow{closest(path, pool)}. Pass trust=True (--trust) only if you trust the file"
        )
