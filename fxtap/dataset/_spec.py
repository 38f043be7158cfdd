"""What identifies a job: its metadata, its arrays and its chunk size, all derived from the options."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

import fxtap.dataset._data as _data
import fxtap.dataset._store as _store
import fxtap.dataset._taps as _taps
from fxtap._version import __version__
from fxtap.errors import InvalidArgumentError, format_choices

#: Default chunk size target: the largest multiple of the batch size under this many bytes.
CHUNK_BYTES = 16 * 2**20


def chunk_size(given: int | None, batch: int, taps: dict, total: int) -> int:
    if given is not None:
        if not isinstance(given, int) or given < 1 or given % batch:
            raise InvalidArgumentError(
                f"chunk_size={given!r} is not a positive multiple of batch_size={batch}; pass "
                f"e.g. chunk_size={batch * 4} (--chunk-size)"
            )
        return given
    per_sample = sum(v[:1].numel() * v.element_size() for v in taps.values())
    batches = max(1, CHUNK_BYTES // max(1, per_sample * batch))
    return min(batches, -(-total // batch)) * batch


def digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, value in module.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def metadata(o, extractor, requested, source, taps, pools, store_dtype, chunk) -> dict[str, Any]:
    outputs = (
        dict(extractor.outputs["eval"]) if hasattr(extractor, "outputs") else {k: k for k in taps}
    )
    for key in taps:
        if key in _store.RESERVED or "/" in key or key.startswith(("__", ".")):
            raise InvalidArgumentError(
                f"output key {key!r} cannot name an array (reserved: {format_choices(_store.RESERVED)}); "
                "rename it with return_nodes={'node': 'new_key'} (--nodes node=new_key)"
            )
    job = {
        "model": o["model_spec"]
        or f"{type(o['model_or_extractor']).__module__}.{type(o['model_or_extractor']).__qualname__}",
        "parameters_sha256": digest(extractor),
        "requested_nodes": requested,
        "resolved_nodes": outputs,
        "mode": "eval",
        "pool": pools,
        "dtype": str(store_dtype).removeprefix("torch.") if store_dtype else None,
        "batch_size": source.batch_size,
        "chunk_size": chunk,
        "num_samples": len(source.dataset),
        "data": _data.describe(source.dataset),
        "device": o["target"].type,
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


def arrays(meta, taps, labels, total, chunk) -> list[_store.ArraySpec]:
    specs = []
    for key, value in taps.items():
        shape = tuple(value.shape[1:])
        dtype = str(_taps.to_numpy(value[:0]).dtype)
        specs.append(
            _store.ArraySpec(key, (total, *shape), (chunk, *shape), dtype, 0, meta["taps"][key])
        )
    if labels is not None:
        if labels.dim() != 1 or labels.is_floating_point():
            raise InvalidArgumentError(
                "labels must be one integer per sample; return (tensor, int) samples or drop them"
            )
        specs.append(_store.ArraySpec("labels", (total,), (chunk,), "int64", -1, {}))
    specs.append(_store.ArraySpec("valid", (total,), (chunk,), "bool", False, {}))
    specs.append(_store.ArraySpec("chunks_done", (-(-total // chunk),), (1,), "uint8", 0, {}))
    return specs
