"""Write the safe ``.fxtap`` archive: graphs and module specs as JSON, tensors as safetensors."""

from __future__ import annotations

import json
import zipfile
from typing import IO, Any

import torch
from torch import fx, nn

from fxtap._fx import EDIT_KEY
from fxtap._protocol import Extractor
from fxtap.capture import CaptureExtractor
from fxtap.errors import InvalidArgumentError
from fxtap.extractor import MODES, FeatureExtractor
from fxtap.save._capture import describe_capture
from fxtap.save._encode import Tensors, encode, encode_module, function_path, unsavable
from fxtap.save._manifest import FORMAT_NAME, FORMAT_VERSION, MANIFEST, WEIGHTS
from fxtap.save._ops import REBUILD_OUTPUT, encode_op, encode_treespec
from fxtap.save._schema import MAX_STRING, encode_outputs
from fxtap.trace import NAME_KEY

__all__ = ["pack"]


def pack(extractor: Extractor, file: IO[bytes]) -> None:
    """Write the ``.fxtap`` archive of ``extractor`` to ``file`` (the format of ``fxtap.save``).

    A ``CaptureExtractor`` is stored as its model's module tree and its requests
    (``fxtap.save._capture``); a ``FeatureExtractor`` as its graphs and what they use.
    """
    from safetensors.torch import save as save_tensors

    tensors = Tensors()
    if isinstance(extractor, FeatureExtractor):
        manifest = _describe(extractor, tensors)
    elif isinstance(extractor, CaptureExtractor):
        manifest = describe_capture(extractor, tensors)
    else:
        raise InvalidArgumentError(
            f"extractor is a {type(extractor).__name__}, which the safe fxtap format cannot "
            "describe; save it with fmt='pickle' (--format pickle) and load it with trust=True"
        )
    _check_strings(manifest)
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST, json.dumps(manifest, indent=1))
        archive.writestr(
            WEIGHTS, save_tensors(tensors.data) if tensors.data else b"", zipfile.ZIP_STORED
        )
        if isinstance(extractor, FeatureExtractor):
            for mode in MODES:
                code = extractor.graph_for(mode).python_code(root_module="self").src
                archive.writestr(f"code/{mode}.py", f"# {mode} mode, for reading only\n{code}")


def _describe(extractor: FeatureExtractor, tensors: Tensors) -> dict[str, Any]:
    for mode in MODES:
        _refuse_function_edits(extractor.graph_for(mode))
    graphs = {mode: _encode_graph(extractor.graph_for(mode)) for mode in MODES}
    targets: dict[str, str] = {}
    for mode in MODES:
        for node in extractor.graph_for(mode).nodes:
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
