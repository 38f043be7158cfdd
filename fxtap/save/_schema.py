"""The manifest schema's parts: the validated specs, tagged values, identifiers and paths."""

from __future__ import annotations

import builtins
import itertools
import keyword
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from fxtap._compat import fx_reserved_globals
from fxtap._fx import CUT_KEY, EDIT_KEY
from fxtap._protocol import Extractor
from fxtap.errors import LoadError, close_matches

__all__ = [
    "CONSTANTS",
    "MARK_KEYS",
    "MAX_MODULES",
    "MAX_NODES",
    "MAX_PATH_PARTS",
    "MAX_STRING",
    "NAME",
    "PARAMETER_RESERVED",
    "Checked",
    "ModuleSpec",
    "NodeSpec",
    "Ref",
    "as_bool",
    "as_list",
    "as_object",
    "as_string",
    "as_strings",
    "check_code_names",
    "check_keys",
    "closest",
    "decode",
    "dotted_path",
    "identifier",
    "local_name",
    "member_name",
    "name",
    "no_nodes",
    "path_part",
    "prefixes",
    "root_internals",
]

MAX_STRING = 4096
#: Most modules (nested ones included) and most nodes per graph a file may hold: a file at
#: each cap loads in seconds and a few hundred MB (benchmarks/bench_load.py, docs/benchmarks.md).
MAX_MODULES = 10_000
MAX_NODES = 20_000
#: Most parts in a dotted path: each path's prefixes are checked, so this bounds that work.
MAX_PATH_PARTS = 64
_MAX_SUGGESTION_POOL = 20_000
_DEVICE = re.compile(r"(cpu|cuda|meta|mps|xpu)(:[0-9]{1,3})?")
#: The one shape of a name read from a file (``re.ASCII``: no Unicode letter or digit matches).
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}", re.ASCII)
#: A module path part fx writes as ``getattr(m, "0")``: ASCII, no quote or backslash.
_PLAIN_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,199}", re.ASCII)
_SCALARS = (bool, int, float, str, type(None))
# NOTE: names the generated forward uses besides its locals: self, builtins, fx's globals.
_RESERVED = frozenset({"self", *dir(builtins), *fx_reserved_globals()})
PARAMETER_RESERVED = frozenset({"self", *fx_reserved_globals()})


def _torch_values(kind: type) -> dict[str, Any]:
    return {k: v for k, v in vars(torch).items() if isinstance(v, kind) and not k.startswith("_")}


#: The torch constants a value may name, by tag.
CONSTANTS: dict[str, dict[str, Any]] = {
    "dtype": _torch_values(torch.dtype),
    "memory_format": _torch_values(torch.memory_format),
    "layout": _torch_values(torch.layout),
}


@dataclass(frozen=True)
class Ref:
    """A reference to an earlier node of the same graph, by name."""

    name: str


#: ``node.meta`` keys a file keeps for each node besides its name, each a string: a split's
#: cut (``fxtap_cut``) and the node an edit replaces (``fxtap_edit_of``).
MARK_KEYS = (CUT_KEY, EDIT_KEY)


@dataclass(frozen=True)
class NodeSpec:
    """One validated graph node; ``args`` and ``kwargs`` hold decoded values and ``Ref``."""

    name: str
    op: str
    target: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    fxtap_name: str | None
    #: ``node.meta`` marks render draws, as ``(key, text)``: a split's cut, an edit's node.
    marks: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ModuleSpec:
    """One validated module: class path, state and children (``same_as`` for a shared one)."""

    path: str
    cls: str
    training: bool
    config: dict[str, Any]
    parameters: dict[str, str | None]
    buffers: dict[str, str | None]
    non_persistent: tuple[str, ...]
    children: dict[str, Any]  # ModuleSpec, same_as path, TransformersSpec or None
    parametrized: bool = False
    #: constructor arguments a class keeps only privately (``fxtap.save._state``)
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Checked:
    """A manifest that passed every check."""

    class_name: str
    training: bool
    graphs: dict[str, tuple[NodeSpec, ...]]
    modules: dict[str, Any]  # ModuleSpec, same_as path or TransformersSpec
    attributes: dict[str, tuple[str, bool]]
    tensors: dict[str, tuple[bool, bool]]
    outputs: dict[str, dict[str | int, str]]
    kept: dict[str, frozenset[str]]
    opaque: tuple[str, ...]
    #: arguments that default to None, and by mode the graphs for calls that leave them out
    fixed_to_none: tuple[tuple[str, ...], dict[str, tuple[NodeSpec, ...]]] | None = None


def decode(value: Any, where: str, inner: Any) -> Any:
    """Decode a tagged JSON value; ``inner(value, where)`` decodes nested values."""
    if isinstance(value, _SCALARS):
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise LoadError(
                f"{where}: expected a string of at most {MAX_STRING} characters, got one of "
                f"{len(value)}"
            )
        return value
    if isinstance(value, list):
        return [inner(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, dict) or len(value) != 1:
        raise LoadError(f"{where}: {value!r:.60} is not a value fxtap writes")
    ((tag, body),) = value.items()
    return _decode_tagged(tag, body, where, inner)


def _decode_tagged(tag: Any, body: Any, where: str, inner: Any) -> Any:
    """The value of one ``{tag: body}`` object (``decode``)."""
    if tag == "tuple":
        return tuple(inner(v, f"{where}[{i}]") for i, v in enumerate(as_list(body, where)))
    if tag == "dict":
        result = {}
        for i, pair in enumerate(as_list(body, where)):
            if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], (str, int)):
                raise LoadError(f"{where}[{i}]: a dict entry is a [key, value] pair")
            result[pair[0]] = inner(pair[1], f"{where}[{i}]")
        return result
    if tag == "size":
        items = as_list(body, where)
        if not all(type(v) is int for v in items):
            raise LoadError(f"{where}: a size holds integers only")
        return torch.Size(items)
    if tag == "slice":
        parts = as_list(body, where)
        if len(parts) != 3:
            raise LoadError(f"{where}: a slice holds start, stop and step")
        return slice(*(inner(v, f"{where}[{i}]") for i, v in enumerate(parts)))
    if tag == "ellipsis" and body is True:
        return Ellipsis
    if tag in CONSTANTS:
        if not isinstance(body, str) or body not in CONSTANTS[tag]:
            raise LoadError(
                f"{where}: {body!r:.40} is not a torch {tag}{closest(str(body), CONSTANTS[tag])}"
            )
        return CONSTANTS[tag][body]
    if tag == "device":
        if not isinstance(body, str) or not _DEVICE.fullmatch(body):
            raise LoadError(f"{where}: {body!r:.40} is not a device such as 'cpu' or 'cuda:0'")
        return torch.device(body)
    raise LoadError(f"{where}: unknown value tag {tag!r:.40}")


def no_nodes(value: Any, where: str) -> Any:
    return decode(value, where, no_nodes)


def name(value: Any, where: str, *, private: bool = True, shadows: Collection[str] = ()) -> str:
    """The one rule for every name read from a file, whatever field it comes from.

    A name fully matches ``[A-Za-z_][A-Za-z0-9_]*`` in ASCII (``re.ASCII``), is at most 200
    characters, is not a keyword, does not start with ``__`` (no dunder, no name-mangled
    form), starts with ``_`` only where ``private`` (fields where the saver writes such
    names) and is not in ``shadows`` (the attributes of ``nn.Module`` and ``GraphModule`` for
    attribute names, what the generated ``forward`` uses for its locals).

    ``str.isidentifier()`` is not enough: Python folds identifiers with NFKC when it compiles
    code, so ``'_\uff3fclass\uff3f\uff3f'`` (fullwidth low lines) passes it, passes a
    ``startswith('__')`` test, and then compiles as ``__class__``.

    >>> name("layer1", "modules")
    'layer1'
    """
    if (
        not isinstance(value, str)
        or not NAME.fullmatch(value)
        or keyword.iskeyword(value)
        or value.startswith("__")
    ):
        raise LoadError(
            f"{where}: {value!r:.80} is not a plain identifier ([A-Za-z_][A-Za-z0-9_]* in ASCII, no "
            "keyword, no dunder)"
        )
    if not private and value.startswith("_"):
        raise LoadError(f"{where}: {value!r:.80} starts with '_', which fxtap never writes here")
    if value in shadows:
        raise LoadError(f"{where}: {value!r} would shadow a name generated code relies on")
    return value


def identifier(value: Any, where: str) -> str:
    """A plain ASCII name (``name``'s rule), private names included."""
    return name(value, where)


def local_name(value: Any, where: str) -> str:
    """A name for a local variable of the generated ``forward``: shadows nothing it uses."""
    return name(value, where, shadows=_RESERVED)


def path_part(value: Any, where: str) -> str:
    """A module path component: a name shadowing no module internals, or an ASCII name such as
    ``0`` or ``block1-0`` (fx writes those as ``getattr(m, "block1-0")``: no quotes allowed)."""
    if isinstance(value, str) and not NAME.fullmatch(value) and _PLAIN_PART.fullmatch(value):
        return value
    return member_name(value, where)


def member_name(value: Any, where: str) -> str:
    """An attribute name of a module: ``name``'s rule, shadowing no ``nn.Module`` attribute."""
    return name(value, where, shadows=_module_internals())


def dotted_path(path: Any, where: str, *, top_level: bool) -> str:
    path = as_string(path, where)
    parts = path.split(".", MAX_PATH_PARTS)
    if len(parts) > MAX_PATH_PARTS:
        raise LoadError(f"{where}: a path of more than {MAX_PATH_PARTS} parts")
    for part in parts:
        path_part(part, where)
    if top_level and parts[0] in root_internals():
        raise LoadError(f"{where}: {parts[0]!r} would shadow an attribute of the extractor")
    return path


def check_code_names(root: nn.Module, graphs: Iterable[fx.Graph]) -> None:
    """Check again, just before torch.fx writes code, every name it will write: each module,
    parameter and buffer path of ``root``, and each node's name, placeholder target, module or
    attribute target, method name and keyword of ``graphs``, by ``name``'s rule.

    The schema checked them when it read the file; this holds the rule at the point where a
    name becomes code, so a reader that forgets it cannot open a way to ``exec``.
    """
    for path, _ in root.named_modules(remove_duplicate=False):
        if path:
            dotted_path(path, f"the module {path!r}", top_level=False)
    for path, _ in (*root.named_parameters(), *root.named_buffers()):
        dotted_path(path, f"the tensor {path!r}", top_level=False)
    for graph in graphs:
        for node in graph.nodes:
            where = f"node {node.name!r}"
            local_name(node.name, where)
            if node.op == "placeholder":
                name(node.target, f"{where}.target")
            elif node.op in ("call_module", "get_attr"):
                dotted_path(node.target, f"{where}.target", top_level=True)
            elif node.op == "call_method":
                name(node.target, f"{where}.target", private=False)
            for key in node.kwargs:
                name(key, f"{where}.kwargs")


def prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


_INTERNALS: list[frozenset[str]] = []


def _module_internals() -> frozenset[str]:
    if not _INTERNALS:
        module = frozenset(dir(nn.Module) + list(vars(nn.Module())))
        graph_module = fx.GraphModule(nn.Module(), fx.Graph())
        # FeatureExtractor's own names beside the protocol's (test_save_names pins the union)
        root = {"full", "return_nodes", "outputs", "kept", "opaque", "meta", "_fxtap_modes"}
        root |= {"_graph", "_code", "_lineno_map", "_prologue_start", "_tracer_cls", "graph_for"}
        root |= {"pruned_traces", *dir(fx.GraphModule), *vars(graph_module)}
        _INTERNALS[:] = [module, module | frozenset(dir(Extractor)) | root]
    return _INTERNALS[0]


def root_internals() -> frozenset[str]:
    _module_internals()
    return _INTERNALS[1]


def closest(word: str, pool: Any) -> str:
    # NOTE: a file may name 100k modules: the suggestion looks at a bounded part of the pool
    found = close_matches(word, itertools.islice(pool, _MAX_SUGGESTION_POOL))
    return f" (closest: {', '.join(repr(f) for f in found)})" if found else ""


def as_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise LoadError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def as_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise LoadError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def as_string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise LoadError(f"{where}: expected a string, got {type(value).__name__}")
    if len(value) > MAX_STRING:
        raise LoadError(
            f"{where}: expected a string of at most {MAX_STRING} characters, got one of "
            f"{len(value)}"
        )
    return value


def as_strings(value: Any, where: str) -> list[str]:
    return [as_string(v, f"{where}[{i}]") for i, v in enumerate(as_list(value, where))]


def as_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise LoadError(f"{where}: expected true or false, got {value!r:.40}")
    return value


def check_keys(value: Mapping[str, Any], required: Any, allowed: Any, where: str) -> None:
    allowed = required if allowed is None else allowed
    absent = [k for k in sorted(required) if k not in value]
    extra = [k for k in value if k not in allowed]
    if absent or extra:
        raise LoadError(
            f"{where}: expected the fields {sorted(required)}"
            + (f"; missing {absent}" if absent else "")
            + (f"; unexpected {[e[:40] for e in extra[:3]]}" if extra else "")
        )
