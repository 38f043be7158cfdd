"""What identifies a job: its metadata, its arrays and its chunk size, all derived from the options."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import fxtap.dataset._data as _data
import fxtap.dataset._store as _store
import fxtap.dataset._taps as _taps
from fxtap._protocol import is_extractor
from fxtap._version import __version__
from fxtap.dataset._options import JobOptions
from fxtap.errors import InvalidArgumentError, format_choices

#: Default chunk size: about 1/64 of the samples (1.6 %), so that an interrupted job keeps
#: most of its work, rounded up to whole batches and capped at this many bytes of features.
CHUNK_BYTES = 16 * 2**20
CHUNKS_PER_JOB = 64


def chunk_size(given: int | None, batch: int, taps: dict, total: int) -> int:
    if given is not None:
        if not isinstance(given, int) or given < 1 or given % batch:
            raise InvalidArgumentError(
                f"chunk_size={given!r} is not a positive multiple of batch_size={batch}; pass "
                f"e.g. chunk_size={batch * 4} (--chunk-size)"
            )
        return given
    per_sample = sample_bytes(taps)
    cap = max(1, CHUNK_BYTES // max(1, per_sample * batch))
    samples = -(-total // CHUNKS_PER_JOB)  # ceiling division
    want = -(-samples // batch)
    return max(1, min(want, cap, -(-total // batch))) * batch


def sample_bytes(taps: dict) -> int:
    """Bytes one sample's taps take in the store, before compression."""
    return sum(v[:1].numel() * v.element_size() for v in taps.values())


def digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, value in module.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        # NOTE: hashed in place through the buffer protocol (the same bytes as tobytes(),
        # without copying every weight once more)
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def code_digest(extractor: nn.Module) -> str:
    """SHA-256 of what the extractor runs: both modes' traced code and every module's type.

    A module's type, settings (``extra_repr``) and the source of its class's ``forward`` are
    included, so a leaf module swapped for another (ReLU for GELU) or edited code is caught.
    """
    h = hashlib.sha256()
    if is_extractor(extractor):
        for mode in ("train", "eval"):
            h.update(extractor.traced_code(mode).encode())
    sources: dict[type, str] = {}
    for name, module in extractor.named_modules():
        cls = type(module)
        h.update(f"{name}:{cls.__module__}.{cls.__qualname__}({module.extra_repr()})".encode())
        if cls not in sources:
            try:
                sources[cls] = inspect.getsource(cls.forward)
            except (OSError, TypeError):
                sources[cls] = ""
            h.update(sources[cls].encode())
    return h.hexdigest()


@dataclass(frozen=True)
class StoreLayout:
    """How the store holds the features: one probed batch per tap, pooling, dtype, chunk rows."""

    taps: Mapping[str, torch.Tensor]
    pools: Mapping[str, Any]
    dtype: torch.dtype | None
    chunk: int


def metadata(
    o: JobOptions, extractor: nn.Module, model: nn.Module, source: Any, layout: StoreLayout
) -> dict[str, Any]:
    """The store's metadata: the job, each tap's node, shape and dtype, and the versions."""
    taps, pools, store_dtype, chunk = layout.taps, layout.pools, layout.dtype, layout.chunk
    outputs = dict(extractor.outputs["eval"]) if is_extractor(extractor) else {k: k for k in taps}
    for key in taps:
        if key in _store.RESERVED or "/" in key or key.startswith(("__", ".")):
            raise InvalidArgumentError(
                f"output key {key!r} cannot name an array (reserved: {format_choices(_store.RESERVED)}); "
                "rename it with return_nodes={'node': 'new_key'} (--nodes node=new_key)"
            )
    requested = o.return_nodes
    if requested is None:
        requested = outputs
    elif not isinstance(requested, dict):
        requested = list(requested)
    job = {
        "model": o.model_spec or f"{type(model).__module__}.{type(model).__qualname__}",
        "seed": o.seed,
        "channels_last": o.channels_last,
        "compile": o.compile,
        "parameters_sha256": digest(extractor),
        "code_sha256": code_digest(extractor),
        "requested_nodes": requested,
        "resolved_nodes": outputs,
        "mode": "eval",
        "pool": pools,
        "dtype": str(store_dtype).removeprefix("torch.") if store_dtype else None,
        "batch_size": source.batch_size,
        "chunk_size": chunk,
        "num_samples": len(source.dataset),
        "data": _data.describe(source.dataset),
        "device": o.device.type,
    }
    tap_meta = {
        k: {
            "node": outputs.get(k, k),
            "shape": list(v.shape[1:]),
            "dtype": str(v.dtype).removeprefix("torch."),
        }
        for k, v in taps.items()
    }
    versions = {"fxtap": __version__, "torch": torch.__version__}
    return {
        "format": _store.FORMAT,
        "complete": False,
        "job": job,
        "taps": tap_meta,
        "versions": versions,
    }


def arrays(
    meta: Mapping[str, Any], layout: StoreLayout, labels: torch.Tensor | None, total: int
) -> list[_store.ArraySpec]:
    """The store's arrays: one per tap, then labels (when given), validity and checksums."""
    taps, chunk = layout.taps, layout.chunk
    specs = []
    rows = min(chunk, total)  # one chunk never holds more rows than the data has
    for key, value in taps.items():
        shape = tuple(value.shape[1:])
        dtype = str(_taps.to_numpy(value[:0]).dtype)
        specs.append(
            _store.ArraySpec(key, (total, *shape), (rows, *shape), dtype, 0, meta["taps"][key])
        )
    if labels is not None:
        if labels.dim() != 1 or labels.is_floating_point():
            raise InvalidArgumentError(
                "labels must be one integer per sample; return (tensor, int) samples or drop them"
            )
        specs.append(_store.ArraySpec("labels", (total,), (rows,), "int64", -1, {}))
    specs.append(_store.ArraySpec("valid", (total,), (rows,), "bool", False, {}))
    specs.append(_store.ArraySpec("checksums", (-(-total // chunk),), (1,), "str", "", {}))
    return specs
