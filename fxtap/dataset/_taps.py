"""What a tap's value becomes before it is stored: pooled, cast, checked, turned into numpy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fxtap.errors import InvalidArgumentError, close_matches, format_choices

__all__ = ["POOLS", "STORE_DTYPES", "parse_dtype", "parse_pool", "prepare", "to_numpy"]

#: Pooling names: ``avg`` and ``max`` reduce every dim after the channel dim of ``[N, C, ...]``
#: maps; ``cls`` keeps token 0 and ``token_avg`` averages the tokens of ``[N, T, D]`` sequences.
POOLS = ("avg", "max", "cls", "token_avg")
#: Stored dtypes accepted by ``dtype=`` (floating taps only; other taps keep their dtype).
STORE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def parse_pool(pool: str | Mapping[str, str | None] | None, keys: list[str]) -> dict[str, str]:
    """Validate ``pool=`` and return output key -> pool name (keys without pooling left out)."""
    if pool is None:
        return {}
    if isinstance(pool, str):
        _check_pool(pool, "pool")
        return dict.fromkeys(keys, pool)
    if not isinstance(pool, Mapping):
        raise InvalidArgumentError(
            f"pool={pool!r} is not a name or a dict; expected one of {format_choices(POOLS)} or "
            "a dict such as pool={'layer4': 'avg'}"
        )
    out = {}
    for key, name in pool.items():
        if key not in keys:
            close = close_matches(str(key), keys)
            hint = f"; closest: {format_choices(close)}" if close else ""
            raise InvalidArgumentError(
                f"pool={{{key!r}: ...}} names no tap{hint}. The taps are {format_choices(keys)}"
            )
        if name is not None:
            _check_pool(name, f"pool[{key!r}]")
            out[key] = name
    return out


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Validate ``dtype=``: ``None`` (keep each tap's dtype), float32, float16 or bfloat16."""
    if dtype is None or dtype in STORE_DTYPES.values():
        return dtype  # type: ignore[return-value]
    text = str(dtype).removeprefix("torch.")
    if text in STORE_DTYPES:
        return STORE_DTYPES[text]
    close = close_matches(text, STORE_DTYPES)
    hint = f"; closest: {format_choices(close)}" if close else ""
    raise InvalidArgumentError(
        f"dtype={dtype!r} cannot be stored{hint}. Expected one of {format_choices(STORE_DTYPES)} "
        "(dtype= in Python, --dtype on the command line), or None to keep each tap's dtype"
    )


def prepare(
    key: str, value: Any, pool: str | None, dtype: torch.dtype | None, first: int
) -> torch.Tensor:
    """Pool and cast one tap's batch; ``first`` is the index of the batch's first sample.

    Raises:
        InvalidArgumentError: the value is not a batched tensor, cannot be pooled that way, or
            has finite values that the chosen dtype cannot hold.
    """
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        raise InvalidArgumentError(
            f"tap {key!r} gives a {type(value).__name__}, not a batched tensor; tap a node whose "
            "value is a tensor of shape [N, ...] (list them with: fxtap nodes MODEL)"
        )
    value = value.detach()
    if pool in ("avg", "max") and value.dim() > 2:
        dims = tuple(range(2, value.dim()))
        value = value.mean(dims) if pool == "avg" else value.amax(dims)
    elif pool in ("cls", "token_avg"):
        if value.dim() != 3:
            shape = "x".join(map(str, value.shape))
            raise InvalidArgumentError(
                f"pool={pool!r} needs token sequences [N, T, D] but tap {key!r} is {shape}; use "
                "pool='avg' or 'max' for feature maps"
            )
        value = value[:, 0] if pool == "cls" else value.mean(1)
    if dtype is not None and value.is_floating_point() and value.dtype != dtype:
        cast = value.to(dtype)
        bad = torch.isinf(cast) & torch.isfinite(value)
        if bool(bad.any()):
            row = int(bad.reshape(len(bad), -1).any(1).nonzero()[0, 0])
            big = float(value[bad].abs().max())
            limit = torch.finfo(dtype).max
            name = str(dtype).removeprefix("torch.")
            raise InvalidArgumentError(
                f"tap {key!r} has values up to {big:.4g} (sample {first + row}), beyond "
                f"{name}'s range of ±{limit:.4g}; store it as dtype='bfloat16' or 'float32' "
                "(--dtype on the command line)"
            )
        value = cast
    return value.contiguous()


def to_numpy(value: torch.Tensor) -> np.ndarray:
    """A CPU numpy copy; bfloat16 becomes its uint16 bit pattern (numpy has no bfloat16)."""
    value = value.cpu()
    if value.dtype == torch.bfloat16:
        return value.view(torch.int16).numpy().view(np.uint16)
    return value.numpy()


def _check_pool(name: object, where: str) -> None:
    if name not in POOLS:
        close = close_matches(str(name), POOLS)
        hint = f"; closest: {format_choices(close)}" if close else ""
        raise InvalidArgumentError(
            f"{where}={name!r} is not a pooling{hint}. Expected one of {format_choices(POOLS)} "
            "(--pool on the command line), or None to store full maps"
        )
