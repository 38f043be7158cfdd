"""Save and load feature extractors: a safe zip of JSON graphs and safetensors weights by default.

The default ``.fxtap`` format is a zip holding ``fxtap.json`` (both modes' graphs as node lists,
the leaf modules as class path plus plain attributes, the output keys), ``weights.safetensors``
and, for reading only, each mode's generated Python code under ``code/``. Loading it runs no
code from the file: the archive is read within limits, the manifest is validated against a
strict schema (``fxtap._manifest``) and every function, method and module class is matched by
its exact name against the allowlist of what this saver writes for the torchvision zoo
(``fxtap._allowlist``) before a graph is built (``fxtap._safe_load``). The pickle format
(``torch.save`` of the extractor) keeps anything but runs code stored in the file when loaded,
so ``load`` refuses it unless ``trust=True``. docs/saving.md states the threat model.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import fx, nn

from fxtap._manifest import FORMAT_NAME, FORMAT_VERSION, MANIFEST, WEIGHTS
from fxtap.errors import InvalidArgumentError, LoadError, OutputPathError, format_choices
from fxtap.extractor import MODES, FeatureExtractor
from fxtap.trace import NAME_KEY

__all__ = ["FORMATS", "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST", "WEIGHTS", "load", "save"]

#: ``fmt`` values of ``save``: the safe default and the pickle that needs trust to load.
FORMATS = ("fxtap", "pickle")

# Keys every fresh nn.Module has; the rest of a module's __dict__ is its configuration.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_SCALARS = (bool, int, float, str, type(None))


def save(extractor: FeatureExtractor, path: str | os.PathLike[str], *, fmt: str = "fxtap") -> Path:
    """Write ``extractor`` to ``path``, both modes included.

    Args:
        extractor: what ``create_feature_extractor`` returned.
        path: file to write (conventionally ``NAME.fxtap``); replaced atomically.
        fmt: ``'fxtap'`` (safe: JSON graphs and safetensors weights, loads without running
            code from the file) or ``'pickle'`` (``torch.save``; keeps modules the safe format
            cannot describe, but loading runs code from the file).

    Returns:
        The path written.

    Raises:
        InvalidArgumentError: not an extractor, ``path`` not a path, an unknown ``fmt``, or a
            graph or module the safe format cannot describe (the message suggests
            ``fmt='pickle'``).
        OutputPathError: ``path`` cannot be written.

    >>> ex = create_feature_extractor(torchvision.models.resnet18(), ["layer4"])
    >>> save(ex, tmp / "resnet18.fxtap").name
    'resnet18.fxtap'
    """
    if type(extractor).__name__ == "CaptureExtractor":
        raise InvalidArgumentError(
            "this extractor captures values with hooks while running the whole model (its root "
            "forward could not be traced), so it has no graph to save; save the model's "
            "state_dict and call create_feature_extractor again after loading, or make the "
            "root traceable (docs/tracing.md)"
        )
    if not isinstance(extractor, FeatureExtractor):
        raise InvalidArgumentError(
            f"extractor is a {type(extractor).__name__}, not an fxtap extractor; pass the "
            "FeatureExtractor that fxtap.create_feature_extractor returns"
        )
    target = _as_path(path, "save(extractor, path)", "path='resnet18.fxtap'")
    if fmt not in FORMATS:
        raise InvalidArgumentError(f"fmt {fmt!r} is not one of {format_choices(FORMATS)}")
    if fmt == "pickle":
        _write_atomic(target, lambda f: _pickle(extractor, f))
    else:
        _write_atomic(target, lambda f: _pack(extractor, f))
    return target


def load(path: str | os.PathLike[str], *, trust: bool = False) -> FeatureExtractor:
    """Load an extractor written by ``save``, in the mode it was saved in.

    Without ``trust`` no code from the file runs, at load time or when the extractor is
    called, and reading it takes time and memory bounded by the file's size (docs/saving.md,
    "Threat model").

    Args:
        path: a ``.fxtap`` file (either format).
        trust: ``True`` allows what the safe loader refuses: a pickled extractor, whose
            loading runs arbitrary code stored in the file, and functions, methods and module
            classes outside the allowlist (importing them runs their package's code). Only
            pass ``True`` for files from a source you trust.

    Returns:
        The ``FeatureExtractor``; its outputs equal the saved one's bit for bit.

    Raises:
        InvalidArgumentError: ``path`` is not a path or ``trust`` not a bool.
        LoadError: missing, truncated, corrupted, malformed or foreign file, or one that needs
            ``trust``; the message names the member and field at fault.
    """
    source = _as_path(path, "load(path)", "path='resnet18.fxtap'")
    if not isinstance(trust, bool):
        raise InvalidArgumentError(
            f"trust={trust!r} is not a bool; pass trust=True only for files from a source you "
            "trust, else leave the default trust=False"
        )
    if source.is_dir():
        raise LoadError(
            f"cannot load {str(source)!r}: it is a folder; pass path= a file written by "
            "fxtap.save(extractor, PATH)"
        )
    if not source.is_file():
        raise LoadError(
            f"cannot load {str(source)!r}: no such file. Write one with "
            "fxtap.save(extractor, PATH) or: fxtap extract MODEL --nodes NAME -o PATH"
        )
    from fxtap._safe_load import read_archive

    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise _corrupt(source, exc) from exc
    with archive:
        names = archive.namelist()
        if MANIFEST in names:
            try:
                return read_archive(archive, trust=trust)
            except LoadError as exc:
                raise LoadError(f"cannot load {str(source)!r}: {exc}") from exc
        if not any(n.endswith("data.pkl") for n in names):
            raise LoadError(
                f"cannot load {str(source)!r}: it is a zip file but not a saved fxtap extractor "
                f"(no {MANIFEST}). Save one with fxtap.save(extractor, PATH)"
            )
    if not trust:
        raise LoadError(
            f"cannot load {str(source)!r}: it is a pickled extractor, and unpickling runs code "
            "stored in the file, which can do anything your account can. Pass trust=True "
            "(--trust) only if you trust where the file came from, or re-save it in the safe "
            "format with fxtap.save(extractor, PATH)"
        )
    try:
        loaded = torch.load(source, weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile) as exc:
        raise _corrupt(source, exc) from exc
    if not isinstance(loaded, FeatureExtractor):
        raise LoadError(
            f"cannot load {str(source)!r}: it holds a {type(loaded).__name__}, not a fxtap "
            "FeatureExtractor"
        )
    return loaded


# --- writing ---------------------------------------------------------------------------------


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


def _pack(extractor: FeatureExtractor, file: IO[bytes]) -> None:
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


def _pickle(extractor: FeatureExtractor, file: IO[bytes]) -> None:
    try:
        torch.save(extractor, file)
    except (AttributeError, TypeError, pickle.PicklingError) as exc:
        raise InvalidArgumentError(
            f"the extractor cannot be pickled: {exc}. Keep what it holds importable (no local "
            "functions or lambdas on its modules)"
        ) from exc


def _encode_graph(graph: fx.Graph) -> list[dict[str, Any]]:
    nodes = []
    for node in graph.nodes:
        if node.op == "call_function":
            target: Any = {"function": _function_path(node.target)}
        else:
            target = str(node.target)
        entry: dict[str, Any] = {
            "name": node.name,
            "op": node.op,
            "target": target,
            "args": _encode(node.args),
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
        if home and attr and _lookup(home, attr) is fn:
            return f"{'operator' if home == '_operator' else home}:{attr}"
    raise _unsavable(f"function {fn!r} (no importable module path)")


def _lookup(module_name: str, qualname: str) -> Any:
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError:
        return None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _attr(module: nn.Module, target: str) -> Any:
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through ``write`` to a temporary file next to ``path``, then rename it over."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory")
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
        try:
            with os.fdopen(handle, "wb") as f:
                write(f)
            # NOTE: mkstemp creates files readable by their owner only; use the usual mode.
            mask = os.umask(0o022)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        raise OutputPathError(
            f"cannot write {str(path)!r}: {exc.strerror or exc}. Pick a path in a folder that "
            "exists and that you can write to"
        ) from exc


def _unsavable(what: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{what} cannot be stored in the safe fxtap format, which keeps only torch values and "
        "plain data; save with fmt='pickle' (--format pickle) and load it with trust=True"
    )


# --- reading ---------------------------------------------------------------------------------


def _as_path(path: Any, call: str, example: str) -> Path:
    if isinstance(path, (str, os.PathLike)) and not isinstance(path, bytes):
        text = os.fspath(path)
        if isinstance(text, str) and text:
            return Path(text)
    raise InvalidArgumentError(
        f"path={path!r:.60} ({type(path).__name__}) is not a file path; {call} takes a str or "
        f"os.PathLike naming a file, e.g. {example}"
    )


def _corrupt(path: Path, exc: BaseException) -> LoadError:
    return LoadError(
        f"cannot load {str(path)!r}: the file is truncated or corrupted "
        f"({type(exc).__name__}: {str(exc).strip() or 'no detail'}). Save the extractor again "
        "with fxtap.save(extractor, PATH) or: fxtap extract MODEL --nodes NAME -o PATH"
    )
