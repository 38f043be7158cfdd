"""Graph targets of the export path in the ``.fxtap`` manifest: ATen ops and output structures.

An exported graph calls operator overloads (``torch.ops.aten.add.Tensor``), stored as the tagged
target ``{"op": ["aten", "add", "Tensor"]}``, and rebuilds a model's output structure (a
``ModelOutput``) from a pytree spec, stored as the tagged value ``{"treespec": TREE}`` where
``TREE`` is ``null`` (a leaf) or ``{"type": NAME, "context": KEYS, "children": [TREE, ...]}``.

On load each op name part must be an identifier and the op ``ns::name.overload`` must be in the
allowlist (``_allowlist.OPS``) before it is looked up in ``torch.ops``, with the names the
allowlist holds. A spec's ``type`` must be in ``_allowlist.OUTPUT_TYPES`` and its context plain
keys (no objects: pytree's JSON hook would import classes named in them); the spec text handed to
``torch.utils._pytree`` is written here from the checked data, never taken from the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fxtap import _compat
from fxtap._compat import pytree
from fxtap.errors import InvalidArgumentError, LoadError
from fxtap.save import _allowlist
from fxtap.save._guards import GUARDS, unguarded
from fxtap.save._schema import NAME, as_list, as_object, check_keys, closest, name

__all__ = [
    "REBUILD_OUTPUT",
    "TreeSpecText",
    "check_op",
    "check_op_args",
    "check_rebuild",
    "check_treespec",
    "encode_op",
    "encode_treespec",
    "resolve_op",
]

#: ``module:name`` of the function that rebuilds a model's output structure from its leaves.
REBUILD_OUTPUT = "fxtap.trace._export:rebuild_output"
_PROTOCOL = 1
_MAX_KEYS = 4096
_MAX_NODES = 10_000
#: Schema types ATen declares ``int`` whose values must be these torch constants.
_ENUM_ARGUMENTS = {
    "ScalarType": torch.dtype,
    "Layout": torch.layout,
    "MemoryFormat": torch.memory_format,
}


@dataclass(frozen=True)
class TreeSpecText:
    """A pytree spec, as text written from a checked ``{"treespec": ...}`` value."""

    text: str


def encode_op(target: Any) -> dict[str, list[str]] | None:
    """The tagged target of an operator overload (or of its checked stand-in), or ``None``
    when ``target`` is not one."""
    target = unguarded(target)
    if not _compat.is_op_overload(target):
        return None
    parts = list(_compat.op_parts(target))
    if not all(NAME.fullmatch(p) for p in parts) or _lookup(*parts) is not target:
        raise InvalidArgumentError(
            f"operator {target!r} cannot be found again by its name in torch.ops, so the safe "
            "fxtap format cannot store it; save with fmt='pickle' (--format pickle) and load it "
            "with trust=True"
        )
    return {"op": parts}


def check_op(target: Any, where: str, *, trust: bool) -> str:
    """The op key of a tagged op target, refused unless its parts are identifiers and it is
    allowlisted (any identifiers pass with ``trust``)."""
    check_keys(as_object(target, where), {"op"}, None, where)
    parts = as_list(target["op"], f"{where}.op")
    if len(parts) != 3:
        raise LoadError(f"{where}.op: an op is [namespace, name, overload], not {parts!r:.80}")
    for i, part in enumerate(parts):
        # NOTE: ATen names dunder ops (``aten::__and__.Tensor``): they pass only by the allowlist
        if not isinstance(part, str) or not NAME.fullmatch(part):
            raise LoadError(f"{where}.op[{i}]: {part!r:.80} is not a plain identifier")
    key = f"{parts[0]}::{parts[1]}.{parts[2]}"
    if key in _allowlist.OPS:
        return key
    if trust:
        for i, part in enumerate(parts):
            name(part, f"{where}.op[{i}]")
    else:
        raise LoadError(
            f"{where}: its graph calls the operator {key!r:.80}, which the safe loader does not "
            f"allow{closest(key, _allowlist.OPS)}. Pass trust=True (--trust) only if you trust "
            "the file"
        )
    return key


def check_op_args(key: str, args: tuple[Any, ...], kwargs: dict[str, Any], where: str) -> None:
    """An allowlisted op's dtype, layout and memory format arguments hold those constants.

    ATen's schemas declare them ``int``: torch accepts any integer there and indexes a table
    with it unchecked (``aten::zeros([], dtype=-2)`` crashes the process), so a number or a
    node's value in such a place is refused; a file fxtap wrote holds tagged constants there.
    """
    parts = _allowlist.OPS.get(key)
    op = _lookup(*parts) if parts is not None else None
    if op is None:  # a trusted op outside the list: nothing to check against
        return
    try:
        arguments = _compat.op_schema(op).arguments
    except _compat.CompatError:  # no schemas without torch's private API: keywords by name
        by_name = {"dtype": "ScalarType", "layout": "Layout", "memory_format": "MemoryFormat"}
        given = [(k, by_name[k], v) for k, v in kwargs.items() if k in by_name]
    else:
        given = [(a.name, str(a.real_type), v) for a, v in zip(arguments, args)]
        given += [(a.name, str(a.real_type), kwargs[a.name]) for a in arguments if a.name in kwargs]
    for arg_name, type_text, value in given:
        kind = _ENUM_ARGUMENTS.get(type_text.removeprefix("Optional[").rstrip("]"))
        if kind is not None and value is not None and not isinstance(value, kind):
            raise LoadError(
                f"{where}: argument {arg_name!r} of {key} is a {kind.__name__}, not "
                f"{value!r:.40}; fxtap writes it as a tagged constant such as "
                '{"dtype": "float32"}'
            )


def resolve_op(key: str, *, trust: bool) -> Callable[..., Any]:
    """The operator an op key names: looked up by the allowlist's own names when allowlisted,
    through its checked stand-in when its kernel trusts its arguments (``_guards``)."""
    if key in GUARDS:
        return GUARDS[key]
    parts = _allowlist.OPS.get(key)
    if parts is None:
        if not trust:  # checked by check_op already
            raise AssertionError(f"unchecked operator {key!r}")
        namespace, _, rest = key.partition("::")
        name, _, overload = rest.partition(".")
        parts = (namespace, name, overload)
    found = _lookup(*parts)
    if not _compat.is_op_overload(found):
        raise LoadError(f"its graph calls the operator {key!r}, which this install of torch lacks")
    return found


def encode_treespec(text: str) -> dict[str, Any]:
    """The tagged value of a pytree spec text (``rebuild_output``'s first argument)."""
    protocol, schema = json.loads(text)
    if protocol != _PROTOCOL:
        raise _unsavable(f"a pytree spec of protocol {protocol!r}")
    return {"treespec": _encode_tree(schema)}


def check_treespec(body: Any, where: str) -> TreeSpecText:
    """Check a ``{"treespec": ...}`` body and write the spec text pytree reads."""
    count = [0]
    schema = _check_tree(body, where, count)
    return TreeSpecText(json.dumps([_PROTOCOL, schema]))


def check_rebuild(args: tuple[Any, ...], kwargs: dict[str, Any], where: str) -> None:
    """``rebuild_output`` takes a checked spec and a list of leaves, nothing else."""
    if len(args) != 2 or kwargs or not isinstance(args[0], TreeSpecText):
        raise LoadError(f"{where}: {REBUILD_OUTPUT} takes a {{'treespec': ...}} value and leaves")
    if not isinstance(args[1], list):
        raise LoadError(f"{where}: {REBUILD_OUTPUT}'s leaves are a list")


def _lookup(namespace: str, name: str, overload: str) -> Any:
    # NOTE: called with names from the allowlist, from an op object itself, or with trust=True
    packet = getattr(getattr(torch.ops, namespace, None), name, None)
    return getattr(packet, overload, None) if packet is not None else None


def _encode_tree(schema: dict[str, Any]) -> Any:
    if schema["type"] is None:
        return None
    name = schema["type"]
    cls = pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE.get(name)
    node_def = pytree.SUPPORTED_SERIALIZED_TYPES.get(cls) if cls is not None else None
    if node_def is None or node_def.to_dumpable_context is not None:
        raise _unsavable(f"output type {name!r}")
    context = json.loads(schema["context"])
    if not _plain_keys(context):
        raise _unsavable(f"output type {name!r} with context {context!r:.60}")
    return {
        "type": name,
        "context": context,
        "children": [_encode_tree(child) for child in schema["children_spec"]],
    }


def _plain_keys(context: Any) -> bool:
    if context is None:
        return True
    return isinstance(context, list) and all(
        isinstance(k, (str, int)) and not isinstance(k, bool) for k in context
    )


def _check_tree(value: Any, where: str, count: list[int]) -> dict[str, Any]:
    count[0] += 1
    if count[0] > _MAX_NODES:
        raise LoadError(f"{where}: a pytree spec of more than {_MAX_NODES} nodes")
    if value is None:
        return {"type": None, "context": None, "children_spec": []}
    check_keys(as_object(value, where), {"type", "context", "children"}, None, where)
    name = value["type"]
    path = _allowlist.OUTPUT_TYPES.get(name) if isinstance(name, str) else None
    if path is None:
        raise LoadError(
            f"{where}.type: the output type {name!r:.80} is not one the safe loader allows"
            f"{closest(str(name), _allowlist.OUTPUT_TYPES)}"
        )
    cls = _allowlist.resolve(*path.partition(":")[::2])  # imports it: pytree registers it
    if cls is None or pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE.get(name) is not cls:
        raise LoadError(f"{where}.type: {name!r} is not a registered pytree type in this install")
    context = value["context"]
    if not _plain_keys(context) or (isinstance(context, list) and len(context) > _MAX_KEYS):
        raise LoadError(f"{where}.context: expected null or a list of keys, got {context!r:.60}")
    children = as_list(value["children"], f"{where}.children")
    return {
        "type": name,
        "context": json.dumps(context),
        "children_spec": [
            _check_tree(child, f"{where}.children[{i}]", count) for i, child in enumerate(children)
        ],
    }


def _unsavable(what: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{what} cannot be stored in the safe fxtap format, which keeps only torch values and "
        "plain data; save with fmt='pickle' (--format pickle) and load it with trust=True"
    )
