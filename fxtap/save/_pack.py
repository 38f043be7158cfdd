"""Write the safe ``.fxtap`` archive: graphs and module specs as JSON, tensors as safetensors."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from typing import IO, Any

import torch
from torch import fx, nn

from fxtap.errors import InvalidArgumentError
from fxtap.extractor import MODES, FeatureExtractor
from fxtap.save._allowlist import resolve
from fxtap.save._manifest import FORMAT_NAME, FORMAT_VERSION, MANIFEST, WEIGHTS
from fxtap.save._ops import REBUILD_OUTPUT, encode_op, encode_treespec
from fxtap.trace import NAME_KEY

__all__ = ["pack"]

# Keys every fresh nn.Module has; the rest of a module's __dict__ is its configuration.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_SCALARS = (bool, int, float, str, type(None))


class _Tensors:
    """Tensors to store, each object once; keys are ``t0``, ``t1``, ..."""

    def __init__(self) -> None:
        self.keys: dict[int, str] = {}
        self.data: dict[str, torch.Tensor] = {}
        self.info: dict[str, dict[str, bool]] = {}
        self.storages: set[int] = set()

    def add(self, tensor: torch.Tensor) -> str:
        key = self.keys.get(id(tensor))
        if key is None:
            key = f"t{len(self.keys)}"
            self.keys[id(tensor)] = key
            if tensor.is_meta:
                raise InvalidArgumentError(
                    "the extractor holds tensors on the meta device, which have no values to "
                    "save; build the model on a real device (e.g. torch.device('cpu')) or fill "
                    "it with model.load_state_dict(state, assign=True) before extracting"
                )
            value = tensor.detach().to("cpu").contiguous()
            storage = value.untyped_storage()
            # NOTE: safetensors refuses tensors that share storage; a clone owns its storage.
            if storage.data_ptr() in self.storages or storage.nbytes() != value.nbytes:
                value = value.clone()
            self.storages.add(value.untyped_storage().data_ptr())
            self.data[key] = value
            self.info[key] = {
                "parameter": isinstance(tensor, nn.Parameter),
                "requires_grad": bool(tensor.requires_grad),
            }
        return key


def pack(extractor: FeatureExtractor, file: IO[bytes]) -> None:
    """Write the ``.fxtap`` archive of ``extractor`` to ``file`` (the format of ``fxtap.save``)."""
    from safetensors.torch import save as save_tensors

    tensors = _Tensors()
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
            modules[target] = _encode_module(value, target, tensors, memo)
        elif isinstance(value, torch.Tensor):
            owner = _attr(extractor, target.rpartition(".")[0]) if "." in target else extractor
            field = target.rpartition(".")[2]
            attrs[target] = {
                "tensor": tensors.add(value),
                "persistent": field not in owner._non_persistent_buffers_set,
            }
        else:
            raise _unsavable(f"attribute {target!r} is a {type(value).__name__}")
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "torch": torch.__version__,
        "class_name": extractor._get_name(),
        "training": extractor.training,
        "graphs": graphs,
        "modules": modules,
        "attributes": attrs,
        "tensors": tensors.info,
        "outputs": extractor.outputs,
        "kept": {mode: sorted(names) for mode, names in extractor.kept.items()},
        "opaque": list(extractor.opaque),
    }
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST, json.dumps(manifest, indent=1))
        archive.writestr(
            WEIGHTS, save_tensors(tensors.data) if tensors.data else b"", zipfile.ZIP_STORED
        )
        for mode in MODES:
            code = extractor.graph_for(mode).python_code(root_module="self").src
            archive.writestr(f"code/{mode}.py", f"# {mode} mode, for reading only\n{code}")


def _encode_graph(graph: fx.Graph) -> list[dict[str, Any]]:
    nodes = []
    for node in graph.nodes:
        args = _encode(node.args)
        if node.op == "call_function":
            target: Any = encode_op(node.target) or {"function": _function_path(node.target)}
            if target.get("function") == REBUILD_OUTPUT:  # (spec text, leaves)
                args = {"tuple": [encode_treespec(node.args[0]), _encode(node.args[1])]}
        else:
            target = str(node.target)
        entry: dict[str, Any] = {
            "name": node.name,
            "op": node.op,
            "target": target,
            "args": args,
            "kwargs": _encode(node.kwargs),
        }
        if NAME_KEY in node.meta:
            entry["fxtap_name"] = node.meta[NAME_KEY]
        nodes.append(entry)
    return nodes


def _encode(value: Any) -> Any:
    """JSON for an fx argument; containers and torch values are tagged one-key objects."""
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, torch.Size):
        return {"size": list(value)}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        return {"dict": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, slice):
        return {"slice": [_encode(value.start), _encode(value.stop), _encode(value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    raise _unsavable(f"value {value!r:.60} of type {type(value).__name__}")


def _encode_module(
    module: nn.Module, path: str, tensors: _Tensors, memo: dict[int, str]
) -> dict[str, Any]:
    if id(module) in memo:
        return {"same_as": memo[id(module)]}
    memo[id(module)] = path
    cls = type(module)
    config = {}
    for key, value in vars(module).items():
        if key in _MODULE_INTERNALS:
            continue
        try:
            config[key] = _encode(value)
        except InvalidArgumentError as exc:
            raise _unsavable(
                f"module {path!r} ({cls.__name__}) attribute {key!r} is a {type(value).__name__}"
            ) from exc
    return {
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "training": module.training,
        "config": config,
        "parameters": {
            k: (tensors.add(v) if v is not None else None) for k, v in module._parameters.items()
        },
        "buffers": {
            k: (tensors.add(v) if v is not None else None) for k, v in module._buffers.items()
        },
        "non_persistent": sorted(module._non_persistent_buffers_set),
        "modules": {
            k: (_encode_module(v, f"{path}.{k}", tensors, memo) if v is not None else None)
            for k, v in module._modules.items()
        },
    }


def _function_path(fn: Any) -> str:
    """``module:name`` such that importing it gives back ``fn`` itself."""
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__name__", None) or ""
    qualname = getattr(fn, "__qualname__", None) or name
    candidates = [(module, qualname), (module, name)]
    candidates += [(home, name) for home in ("torch", "torch.nn.functional", "operator", "math")]
    for home, attr in candidates:
        if home and attr and resolve(home, attr) is fn:
            return f"{'operator' if home == '_operator' else home}:{attr}"
    raise _unsavable(f"function {fn!r} (no importable module path)")


def _attr(module: nn.Module, target: str) -> Any:
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _unsavable(what: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{what} cannot be stored in the safe fxtap format, which keeps only torch values and "
        "plain data; save with fmt='pickle' (--format pickle) and load it with trust=True"
    )
