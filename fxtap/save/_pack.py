"""Write the safe ``.fxtap`` archive: graphs and module specs as JSON, tensors as safetensors."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from typing import IO, Any

import torch
from torch import fx, nn

from fxtap._fx import EDIT_KEY, clone_structure
from fxtap._protocol import Extractor, Payload
from fxtap.capture._islands import IslandForward
from fxtap.errors import InvalidArgumentError, format_choices
from fxtap.save import _allowlist
from fxtap.save._encode import Tensors, encode, encode_module, function_path, unsavable
from fxtap.save._manifest import FORMAT_NAME, FORMAT_VERSION, MANIFEST, MODES, WEIGHTS
from fxtap.save._ops import REBUILD_OUTPUT, encode_op, encode_treespec
from fxtap.save._outputs import encode_outputs
from fxtap.save._schema import MARK_KEYS, MAX_STRING
from fxtap.trace import NAME_KEY

__all__ = ["KIND", "describe_capture", "describe_graphs", "pack"]

#: ``kind`` of a capture extractor's manifest.
KIND = "capture"


def pack(extractor: Extractor, file: IO[bytes]) -> None:
    """Write the ``.fxtap`` archive of ``extractor`` to ``file`` (the format of ``fxtap.save``).

    What is stored is the extractor's ``payload``: a ``CaptureExtractor``'s model module tree
    and its requests (``describe_capture``), a ``FeatureExtractor``'s graphs and what they use
    (``describe_graphs``).
    """
    from safetensors.torch import save as save_tensors

    tensors = Tensors()
    payload = extractor.payload(tensors)
    _check_strings(payload.manifest)
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST, json.dumps(payload.manifest, indent=1))
        archive.writestr(
            WEIGHTS, save_tensors(tensors.data) if tensors.data else b"", zipfile.ZIP_STORED
        )
        for name, text in payload.files.items():
            archive.writestr(name, text)


def describe_graphs(extractor: Any, tensors: Tensors) -> Payload:
    """A pruning extractor's payload: its graphs and what they use, and their code to read."""
    manifest = _describe(extractor, tensors)
    files = {
        f"code/{mode}.py": f"# {mode} mode, for reading only\n{extractor.traced_code(mode)}"
        for mode in MODES
    }
    return Payload(manifest, files)


def _describe(extractor: Any, tensors: Tensors) -> dict[str, Any]:
    fixed = tuple(getattr(extractor, "fixed_to_none", ()))
    every = [extractor.graph_for(mode) for mode in MODES]
    every += [extractor.graph_for(mode, fixed_to_none=True) for mode in MODES if fixed]
    for graph in every:
        _refuse_function_edits(graph)
    graphs = {mode: _encode_graph(extractor.graph_for(mode)) for mode in MODES}
    targets: dict[str, str] = {}
    for graph in every:
        for node in graph.nodes:
            if node.op in ("call_module", "get_attr"):
                targets[str(node.target)] = node.op
    modules: dict[str, Any] = {}
    attrs: dict[str, Any] = {}
    memo: dict[int, str] = {}
    for target in sorted(targets, key=lambda t: (t.count("."), t)):
        if any(target.startswith(leaf + ".") for leaf in modules):
            continue  # part of a module already stored whole
        value = _attr(extractor, target)
        if isinstance(value, nn.Module):
            modules[target] = encode_module(value, target, tensors, memo)
        elif isinstance(value, torch.Tensor):
            owner = _attr(extractor, target.rpartition(".")[0]) if "." in target else extractor
            field = target.rpartition(".")[2]
            attrs[target] = {
                "tensor": tensors.add(value),
                "persistent": field not in owner._non_persistent_buffers_set,
            }
        else:
            raise unsavable(f"attribute {target!r} is a {type(value).__name__}")
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "torch": torch.__version__,
        "class_name": type(extractor).__name__,
        "training": extractor.training,
        "graphs": graphs,
        "modules": modules,
        "attributes": attrs,
        "tensors": tensors.info,
        "outputs": encode_outputs(extractor.outputs),
        "kept": {mode: sorted(names) for mode, names in extractor.kept.items()},
        "opaque": list(extractor.opaque),
        # the graphs for calls that leave out these None-default arguments (docs/saving.md)
        **({"fixed_to_none": _encode_fixed(extractor, fixed)} if fixed else {}),
    }


def _encode_fixed(extractor: Any, args: tuple[str, ...]) -> dict[str, Any]:
    graphs = extractor.graph_for
    return {
        "args": list(args),
        "graphs": {mode: _encode_graph(graphs(mode, fixed_to_none=True)) for mode in MODES},
    }


def _refuse_function_edits(graph: fx.Graph) -> None:
    """A function given to ``fxtap.edit`` is code of the user's: only the pickle keeps it."""
    for node in graph.nodes:
        if node.op == "call_function" and EDIT_KEY in node.meta:
            raise InvalidArgumentError(
                f"the edit of {node.meta[EDIT_KEY]!r} is the function "
                f"{getattr(node.target, '__name__', node.target)!r}, not a module; the safe "
                "fxtap format stores edits as modules only. Use an fxtap.edits module or an "
                "nn.Module, or save with fmt='pickle' (--format pickle) and load it with "
                "trust=True"
            )


def _encode_graph(graph: fx.Graph) -> list[dict[str, Any]]:
    nodes = []
    for node in graph.nodes:
        args = encode(node.args)
        if node.op == "call_function":
            target: Any = encode_op(node.target) or {"function": function_path(node.target)}
            if target.get("function") == REBUILD_OUTPUT:  # (spec text, leaves)
                args = {"tuple": [encode_treespec(node.args[0]), encode(node.args[1])]}
        else:
            target = str(node.target)
        entry: dict[str, Any] = {
            "name": node.name,
            "op": node.op,
            "target": target,
            "args": args,
            "kwargs": encode(node.kwargs),
        }
        if NAME_KEY in node.meta:
            entry["fxtap_name"] = node.meta[NAME_KEY]
        for key in MARK_KEYS:
            if isinstance(node.meta.get(key), str):
                entry[key] = node.meta[key]
        nodes.append(entry)
    return nodes


def _attr(module: nn.Module, target: str) -> Any:
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _check_strings(manifest: dict[str, Any]) -> None:
    """Refuse a string the loader would refuse (over ``MAX_STRING`` characters), naming it."""
    stack: list[tuple[str, Any]] = [("the manifest", manifest)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                stack.append((f"a key of {where}", key))
                stack.append((key if where == "the manifest" else f"{where}.{key}", item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, str) and len(value) > MAX_STRING:
            raise InvalidArgumentError(
                f"cannot save the extractor: {where[:120]} is a string of {len(value)} "
                f"characters ({value[:20]!r}...), and the .fxtap format holds strings of at "
                f"most {MAX_STRING} (output keys, names, configuration values); shorten it, or "
                "save with fmt='pickle' (--format pickle) and load with trust=True"
            )


def describe_capture(extractor: Any, tensors: Tensors) -> dict[str, Any]:
    """The manifest of ``extractor``; its tensors go to ``tensors``."""
    if extractor.edited:
        raise InvalidArgumentError(
            f"the extractor edits {format_choices(extractor.edited)} with forward hooks (its "
            "model's root forward cannot be traced), which the safe fxtap format does not store; "
            "save with fmt='pickle' (--format pickle) and load it with trust=True"
        )
    model = clone_structure(extractor.model, {})
    for module in model.modules():
        if isinstance(vars(module).get("forward"), IslandForward):
            del module.__dict__["forward"]  # the extractor's own, rebuilt on load
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "torch": torch.__version__,
        "kind": KIND,
        "class_name": type(model).__name__,
        "training": extractor.training,
        "model": encode_module(model, "model", tensors, {}),
        "tensors": tensors.info,
        "outputs": encode_outputs(extractor.outputs),
        "reason": extractor.reason,
        "tracer": _encode_tracer(extractor.tracer_kwargs),
    }


def _encode_tracer(options: Mapping[str, Any]) -> dict[str, Any]:
    encoded: dict[str, Any] = {}
    for key, value in options.items():
        if key == "leaf_modules":
            paths = [f"{c.__module__}:{c.__qualname__}" for c in value]
            for cls, path in zip(value, paths, strict=True):
                if not (isinstance(cls, type) and _allowlist.resolve(*path.split(":")) is cls):
                    raise unsavable(f"tracer_kwargs['leaf_modules'] item {cls!r}")
            encoded[key] = paths
        elif key == "autowrap_functions":
            encoded[key] = [function_path(fn) for fn in value]
        elif key == "autowrap_modules":
            encoded[key] = [getattr(m, "__name__", repr(m)) for m in value]
        elif key in ("param_shapes_constant", "record_source") and isinstance(value, bool):
            encoded[key] = value
        else:
            raise unsavable(f"tracer_kwargs[{key!r}] = {value!r:.40}")
    return encoded
