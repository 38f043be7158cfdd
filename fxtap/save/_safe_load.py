"""Read a ``.fxtap`` archive without running code from it: bounded reads, checks, then build.

The order is the guarantee: each zip member's declared size and compression ratio are checked
before it is read, the manifest is parsed within limits and validated by ``fxtap.save._manifest``,
and only then are modules created (``cls.__new__`` plus ``nn.Module.__init__``, never the
class's constructor) and graphs built with ``fx.Graph``'s API from the validated specs.
Functions, methods and classes come from the allowlist, resolved by their exact names.
"""

from __future__ import annotations

import json
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import fx, nn

from fxtap._fixed_to_none import FixedToNone
from fxtap._protocol import Extractor
from fxtap.errors import LoadError
from fxtap.extractor import ExtractorInfo, FeatureExtractor
from fxtap.save import _manifest
from fxtap.save._build import build_module, function, tensors_of
from fxtap.save._capture import CheckedCapture, build_capture, check_capture
from fxtap.save._manifest import MANIFEST, MODES, WEIGHTS
from fxtap.save._ops import TreeSpecText, resolve_op
from fxtap.save._schema import Checked, NodeSpec, Ref, check_code_names
from fxtap.trace import NAME_KEY

__all__ = [
    "MAX_DEPTH",
    "MAX_MANIFEST_BYTES",
    "MAX_RATIO",
    "MAX_VALUES",
    "MAX_WEIGHTS_BYTES",
    "build",
    "parse",
    "read_archive",
]

#: Largest declared size of ``weights.safetensors``, and the largest compression ratio of any
#: member (fxtap stores the weights uncompressed and deflates JSON about 10:1).
MAX_WEIGHTS_BYTES = 1 << 40
MAX_RATIO = 200
_COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
#: Limits on ``fxtap.json``: bytes, JSON values (a bound on the memory parsing takes), depth.
MAX_MANIFEST_BYTES = 16 << 20
MAX_VALUES = 400_000
MAX_DEPTH = 48


def read_archive(archive: zipfile.ZipFile, *, trust: bool) -> Extractor:
    """Build the extractor a ``.fxtap`` archive describes (see the module docstring)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    data = parse(_read(archive, MANIFEST, MAX_MANIFEST_BYTES))
    capture = isinstance(data, dict) and "kind" in data
    checked = check_capture(data, trust=trust) if capture else _manifest.check(data, trust=trust)
    weights = _read(archive, WEIGHTS, MAX_WEIGHTS_BYTES)
    try:
        stored = load_tensors(weights) if weights else {}
    except SafetensorError as exc:
        raise LoadError(f"{WEIGHTS} is not a valid safetensors file ({exc})") from exc
    del weights
    if isinstance(checked, CheckedCapture):
        return build_capture(checked, tensors_of(checked.tensors, stored), trust=trust)
    return build(checked, stored, trust=trust)


def build(checked: Checked, stored: Mapping[str, torch.Tensor], *, trust: bool) -> FeatureExtractor:
    """The extractor of a checked manifest, with tensors ``stored`` (shared, not copied)."""
    tensors = tensors_of(checked.tensors, stored)
    root = _build_root(checked, tensors, trust=trust)
    graphs = {mode: _build_graph(checked.graphs[mode], mode, trust=trust) for mode in MODES}
    fixed = None
    if checked.fixed_to_none is not None:
        args, specs = checked.fixed_to_none
        fixed = FixedToNone(args, {m: _build_graph(specs[m], m, trust=trust) for m in MODES})
    info = ExtractorInfo(outputs=checked.outputs, opaque=tuple(checked.opaque), fixed_to_none=fixed)
    check_code_names(root, [*graphs.values(), *(fixed.graphs.values() if fixed else ())])
    # NOTE: Python warns at compile time about code that can only fail (``None[0]``, a
    # literal called); the generated forward of a file fxtap wrote never holds such code
    with warnings.catch_warnings():
        warnings.simplefilter("error", SyntaxWarning)
        try:
            return FeatureExtractor(
                root, graphs, class_name=checked.class_name, training=checked.training, info=info
            )
        except SyntaxError as exc:
            raise LoadError(f"graphs: the generated code cannot run ({exc.msg})") from exc


def parse(raw: bytes) -> Any:
    """Parse ``fxtap.json``, refusing files too large, too many values or nested too deep."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise LoadError(f"{MANIFEST} holds {len(raw)} bytes, more than {MAX_MANIFEST_BYTES}")
    # every JSON value but the first follows a ',', '[' or '{': this bounds the parse's memory
    values = raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1
    if values > MAX_VALUES:
        raise LoadError(f"{MANIFEST} holds up to {values} values, more than {MAX_VALUES}")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise LoadError(f"{MANIFEST} is not valid JSON ({exc})") from exc
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise LoadError(f"{MANIFEST} nests values deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack += [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            stack += [(v, depth + 1) for v in value]
    return data


def _read(archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """One member's bytes, refused before reading if its declared size or ratio is too large."""
    found = [info for info in archive.infolist() if info.filename == name]
    if len(found) != 1:
        raise LoadError(f"the archive holds {len(found)} members named {name!r}; expected one")
    (info,) = found
    if info.flag_bits & 0x1:
        raise LoadError(f"member {name!r} is encrypted")
    if info.compress_type not in _COMPRESSIONS:
        raise LoadError(f"member {name!r} uses compression method {info.compress_type}")
    if info.file_size > limit:
        raise LoadError(f"member {name!r} declares {info.file_size} bytes, more than {limit}")
    if info.file_size > MAX_RATIO * max(info.compress_size, 1024):
        raise LoadError(
            f"member {name!r} declares {info.file_size} bytes compressed into "
            f"{info.compress_size}, a ratio above {MAX_RATIO}"
        )
    try:
        with archive.open(info) as f:
            data = f.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise LoadError(
            f"member {name!r} is truncated or corrupted ({exc}). Save the extractor again with "
            "fxtap.save(extractor, PATH)"
        ) from exc
    if len(data) != info.file_size:
        raise LoadError(
            f"member {name!r} holds {len(data)} bytes, not the {info.file_size} declared"
        )
    return data


def _build_root(checked: Checked, tensors: Mapping[str, torch.Tensor], *, trust: bool) -> nn.Module:
    root = nn.Module()
    built: dict[str, nn.Module] = {}
    for path, spec in checked.modules.items():
        owner_path, _, field = path.rpartition(".")
        _ensure_path(root, owner_path)._modules[field] = build_module(
            spec, tensors, built, trust=trust
        )
    for path, (ref, persistent) in checked.attributes.items():
        owner_path, _, field = path.rpartition(".")
        owner = _ensure_path(root, owner_path)
        value = tensors[ref]
        if isinstance(value, nn.Parameter):
            owner._parameters[field] = value
        else:
            owner._buffers[field] = value
            if not persistent:
                owner._non_persistent_buffers_set.add(field)
    return root


def _build_graph(specs: tuple[NodeSpec, ...], mode: str, *, trust: bool) -> fx.Graph:
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}

    def resolve(value: Any) -> Any:
        if isinstance(value, Ref):
            return env[value.name]
        if isinstance(value, TreeSpecText):
            return value.text
        if isinstance(value, (list, tuple)):
            items = [resolve(v) for v in value]
            return items if isinstance(value, list) else tuple(items)
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(resolve(value.start), resolve(value.stop), resolve(value.step))
        return value

    for spec in specs:
        args, kwargs = resolve(spec.args), resolve(spec.kwargs)
        if spec.op == "output":
            graph.output(args[0])
            continue
        target: Any = spec.target
        if spec.op == "call_function" and "::" in spec.target:  # an op, checked by _ops
            target = resolve_op(spec.target, trust=trust)
        elif spec.op == "call_function":
            target = function(spec.target, trust=trust)
        node = graph.create_node(spec.op, target, args, kwargs, name=spec.name)
        if node.name != spec.name:
            # NOTE: fx renames a node whose name is taken or shadows a builtin; a file fxtap
            # wrote never needs that.
            raise LoadError(f"graphs.{mode}: node name {spec.name!r} is reserved in generated code")
        if spec.fxtap_name is not None:
            node.meta[NAME_KEY] = spec.fxtap_name
        node.meta.update(spec.marks)
        env[spec.name] = node
    graph.lint()
    return graph


def _ensure_path(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split(".") if path else ():
        child = module._modules.get(part)
        if child is None:
            child = nn.Module()
            module._modules[part] = child
        module = child
    return module
