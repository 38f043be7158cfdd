"""A job's options as one frozen record, and the checks that run before any work starts."""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fxtap.errors import InvalidArgumentError, ResourceError

__all__ = [
    "JobOptions",
    "check_cpu_workers",
    "check_disk",
    "check_memory",
    "check_out_outside_data",
    "parse_device",
]


@dataclass(frozen=True)
class JobOptions:
    """Everything ``extract_dataset`` was asked, by name; the job's identity is derived from it.

    Attributes mirror ``extract_dataset``'s keyword arguments; ``device`` is resolved.
    """

    device: torch.device
    return_nodes: Any = None
    batch_size: int | None = None
    num_workers: int | None = None
    pool: Any = None
    dtype: Any = None
    resume: bool = True
    progress: bool = True
    skip_bad: bool = False
    chunk_size: int | None = None
    model_spec: str | None = None
    seed: int | None = None
    channels_last: bool = False
    compile: bool = False


def parse_device(device: str | torch.device | None) -> torch.device:
    """The device to compute on; refuses one this machine does not have.

    Raises:
        InvalidArgumentError: not a device, or not present here (names what is).
    """
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgumentError(
            f"device={device!r} is not a device; expected 'cpu' or 'cuda:0' (--device)"
        ) from exc
    fix = "pass device='cpu'"
    if target.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InvalidArgumentError(
                f"device={device!r} is not available: torch sees no CUDA device on this "
                f"machine; {fix}"
            )
        if target.index is not None and target.index >= count:
            raise InvalidArgumentError(
                f"device={device!r} is not available: this machine has {count} CUDA "
                f"device(s), cuda:0 to cuda:{count - 1}; pass one of them or device='cpu'"
            )
    elif target.type == "mps":
        if not torch.backends.mps.is_available():
            raise InvalidArgumentError(f"device={device!r} is not available here; {fix}")
    elif target.type != "cpu":
        raise InvalidArgumentError(
            f"device={device!r} cannot run a dataset job; expected 'cpu', 'cuda:N' or 'mps' "
            "(--device)"
        )
    return target


def check_cpu_workers(num_workers: int | None, *, stacklevel: int = 2) -> None:
    """Warn when more DataLoader workers are asked for than this process has CPUs."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if num_workers is not None and cpus and num_workers > cpus:
        warnings.warn(
            f"num_workers={num_workers} is more than the {cpus} CPU(s) this process may use; "
            f"the workers will compete with the model; pass num_workers={cpus} or fewer "
            "(--num-workers)",
            stacklevel=stacklevel + 1,
        )


def check_out_outside_data(out: str | os.PathLike[str], root: Any) -> None:
    """Refuse a store folder inside the data folder (an image folder would read it as data)."""
    if not isinstance(root, (str, os.PathLike)):
        return
    data, store = Path(root).resolve(), Path(out).resolve()
    if store == data or data in store.parents:
        raise InvalidArgumentError(
            f"out={str(out)!r} is inside the data folder {str(root)!r}: the next run would read "
            "the store as data; pass an out= folder outside it (--out)"
        )


def check_disk(out: Path, needed: int, already: int) -> None:
    """Refuse a job whose store cannot fit on the disk of ``out`` (uncompressed size)."""
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    if needed > free + already:
        raise ResourceError(
            f"the store needs up to {_size(needed)} (before compression) but the disk of "
            f"{str(out)!r} has {_size(free)} free; pass fewer samples, pool the taps (pool=, "
            "--pool), store them as dtype='float16' (--dtype) or choose another out= (--out)"
        )


def check_memory(batch_bytes: int, batch_size: int) -> None:
    """Refuse a batch that cannot fit in this machine's memory."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return
    if batch_bytes > total:
        raise ResourceError(
            f"batch_size={batch_size} needs about {_size(batch_bytes)} per batch, more than "
            f"this machine's {_size(total)} of memory; pass a smaller batch_size= (--batch-size)"
        )


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} PB"  # pragma: no cover
