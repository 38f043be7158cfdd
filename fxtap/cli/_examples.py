"""Example inputs for the command line: tensors from ``--input`` specs, and shapes that fit."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from fxtap.cli._inputs import DEFAULT_INPUT, DTYPE_NAMES, InputSpec
from fxtap.cli._inputs import parse_dtype as _dtype_name
from fxtap.cli._inputs import parse_input as _input_spec
from fxtap.errors import InvalidArgumentError, ResourceError

__all__ = [
    "DTYPES",
    "available_memory",
    "make_inputs",
    "parse_dtype",
    "parse_input",
    "suggest_input",
]

#: dtype names accepted by ``--input SHAPE:DTYPE`` and ``--dtype``.
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, real) for name, real in DTYPE_NAMES.items()}


def parse_input(text: str) -> InputSpec:
    """Parse ``"1x3x224x224"`` or ``"1x3x224x224:float16"`` into an ``InputSpec``.

    >>> parse_input("1x3x64x64:float16")
    InputSpec(shape=(1, 3, 64, 64), dtype='float16')

    Raises:
        InvalidArgumentError: not positive integers separated by ``x``, or an unknown dtype.
    """
    try:
        return _input_spec(text)
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None


def parse_dtype(text: str) -> torch.dtype:
    """Parse a dtype name such as ``float16`` (``torch.`` prefix allowed)."""
    try:
        return DTYPES[_dtype_name(text)]
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None


def make_inputs(
    specs: Sequence[InputSpec] | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Build reproducible example inputs: normal noise for floats, zeros and ones for integers.

    Args:
        specs: one per model input (default: one ``1x3x224x224`` input).
        dtype: dtype (or its name) of inputs whose spec names none (default: float32).
        seed: random seed, so two runs see the same inputs.
    """
    specs = list(specs) if specs else [parse_input(DEFAULT_INPUT)]
    fallback = parse_dtype(dtype) if isinstance(dtype, str) else dtype or torch.float32
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in specs:
        kind = DTYPES[spec.dtype] if spec.dtype else fallback
        _check_memory(spec, kind)
        if kind.is_floating_point:
            t = torch.randn(spec.shape, generator=generator).to(kind)
        elif kind == torch.bool:
            t = torch.randint(0, 2, spec.shape, generator=generator).bool()
        else:
            t = torch.randint(0, 2, spec.shape, generator=generator).to(kind)
        tensors.append(t)
    return tuple(tensors)


def _check_memory(spec: InputSpec, kind: torch.dtype) -> None:
    """Refuse an input that cannot fit in memory, before allocating anything."""
    numel = 1
    for size in spec.shape:
        numel *= int(size)
    need = numel * torch.empty((), dtype=kind).element_size()
    have = available_memory()
    if have is not None and need > have:
        shape = "x".join(str(s) for s in spec.shape)
        raise ResourceError(
            f"input {shape!r} ({str(kind).removeprefix('torch.')}) needs {_bytes(need)} but only "
            f"{_bytes(have)} of memory is available; pass a smaller --input, e.g. 1x3x224x224"
        )


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable``), when known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} PB"


def suggest_input(
    spec: str, model: nn.Module, rejected: Sequence[tuple[int, ...]] = ()
) -> str | None:
    """A ``--input`` the model accepts, never one in ``rejected``; ``None`` when none found.

    Tries the torchvision weights' preprocessing first (their crop size; 16 frames for video
    models), then what ``fxtap.names.suggest_input_shape`` reads from the model itself.
    """
    from fxtap._shapes import suggest_input_shape

    preferred = _weights_shape(spec)
    shape = suggest_input_shape(model, rejected=rejected, prefer=[preferred] if preferred else [])
    return "x".join(map(str, shape)) if shape else None


def _weights_shape(spec: str) -> tuple[int, ...] | None:
    """The input shape torchvision's weights for this model are made for (no download)."""
    source, _, name = spec.rpartition(":")
    if source != "torchvision":
        return None
    try:
        import torchvision.models

        weights = torchvision.models.get_model_weights(name)
        preprocess = next(iter(weights)).transforms()
    except Exception:  # no weights enum, or preprocessing that needs arguments
        return None
    size = getattr(preprocess, "crop_size", None) or getattr(preprocess, "resize_size", None)
    if not size:
        return None
    h, w = (size[0], size[-1]) if isinstance(size, (list, tuple)) else (size, size)
    kind = type(preprocess).__name__
    if kind == "VideoClassification":
        return (1, 3, 16, int(h), int(w))
    if kind in ("ImageClassification", "SemanticSegmentation"):
        return (1, 3, int(h), int(w))
    return None
