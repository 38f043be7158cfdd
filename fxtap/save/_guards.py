"""Checked stand-ins for the allowlisted ATen ops whose kernels trust their arguments.

Fuzzing every allowlisted op with hostile arguments (tests/test_save_op_fuzz.py) found kernels
that read out of bounds instead of raising: batch norm's ``_native_batch_norm_legit*`` with a
weight, bias or running statistic shorter than the input's channels or, without running
statistics, in eval mode, and ``_fft_r2c`` and ``_fft_c2r`` with a dim out of range. torch.export writes the batch norm ops for every ``BatchNorm`` layer, so
instead of leaving the list they are called through these functions in a loaded graph: each
checks what the public op (``torch.batch_norm``, ``torch.fft.rfftn``) checks, raises
``RuntimeError`` as it would, then calls the op. ``fxtap.save._ops`` resolves an op key to its
stand-in and writes a stand-in back as the op, so files keep naming the op itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["GUARDS", "unguarded"]

_aten = torch.ops.aten


def native_batch_norm_legit_no_training(*args: Any, **kwargs: Any) -> Any:
    """``aten._native_batch_norm_legit_no_training`` after the checks its kernel lacks."""
    return _checked("aten::_native_batch_norm_legit_no_training.default", _batch_norm, args, kwargs)


def native_batch_norm_legit(*args: Any, **kwargs: Any) -> Any:
    """``aten._native_batch_norm_legit`` (updates the running statistics) after the checks."""
    return _checked("aten::_native_batch_norm_legit.default", _batch_norm, args, kwargs)


def native_batch_norm_legit_no_stats(*args: Any, **kwargs: Any) -> Any:
    """``aten._native_batch_norm_legit.no_stats`` after the checks its kernel lacks."""
    return _checked("aten::_native_batch_norm_legit.no_stats", _batch_norm_no_stats, args, kwargs)


def fft_r2c(*args: Any, **kwargs: Any) -> Any:
    """``aten._fft_r2c`` with its dims checked: distinct, each within the input's dims."""
    return _checked("aten::_fft_r2c.default", _fft, args, kwargs)


def fft_c2r(*args: Any, **kwargs: Any) -> Any:
    """``aten._fft_c2r`` with its dims and output size checked."""
    return _checked("aten::_fft_c2r.default", _fft_c2r, args, kwargs)


def _checked(
    key: str, check: Callable[..., None], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run ``check`` on the arguments, then the op ``key``."""
    check(*args, **kwargs)
    return _OP[key](*args, **kwargs)


def _batch_norm(
    input: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    *_: Any,
    **__: Any,
) -> None:
    """``_native_batch_norm_legit`` with running statistics, in either mode."""
    _check_channels(input, weight=weight, bias=bias, mean=running_mean, var=running_var)


def _batch_norm_no_stats(
    input: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    training: bool,
    *_: Any,
    **__: Any,
) -> None:
    """Without running statistics only training mode has statistics to use (the batch's)."""
    _check_channels(input, weight=weight, bias=bias)
    if training is not True:
        raise RuntimeError("batch norm without running statistics needs training=True")


def _fft(self: torch.Tensor, dim: list[int], normalization: int, *_: Any, **__: Any) -> None:
    """``_fft_r2c`` and ``_fft_c2r``: distinct dims, each within the input's dims."""
    _check_tensor(self, "self")
    ndim = self.dim()
    if not dim or any(not -ndim <= d < ndim for d in dim):
        raise RuntimeError(f"fft: dims {dim} out of range for a {ndim}-D input")
    if len({d % ndim for d in dim}) != len(dim) or normalization not in (0, 1, 2):
        raise RuntimeError(f"fft: dims {dim} repeat, or normalization {normalization} unknown")


def _fft_c2r(self: torch.Tensor, dim: list[int], normalization: int, last_dim_size: int) -> None:
    """``_fft_c2r``: the dims, and a positive output size."""
    _fft(self, dim, normalization)
    if not isinstance(last_dim_size, int) or last_dim_size < 1:
        raise RuntimeError(f"_fft_c2r: last_dim_size {last_dim_size!r} is not a positive size")


#: op key -> its checked stand-in.
GUARDS: dict[str, Callable[..., Any]] = {
    "aten::_native_batch_norm_legit_no_training.default": native_batch_norm_legit_no_training,
    "aten::_native_batch_norm_legit.default": native_batch_norm_legit,
    "aten::_native_batch_norm_legit.no_stats": native_batch_norm_legit_no_stats,
    "aten::_fft_r2c.default": fft_r2c,
    "aten::_fft_c2r.default": fft_c2r,
}
_OP = {key: getattr(getattr(_aten, key[6:].split(".")[0]), key.split(".")[1]) for key in GUARDS}
_OPS = {guard: _OP[key] for key, guard in GUARDS.items()}


def unguarded(target: Any) -> Any:
    """The op a stand-in checks, or ``target`` itself (the saver writes the op)."""
    try:
        return _OPS.get(target, target)
    except TypeError:  # an unhashable target
        return target


def _check_tensor(value: Any, name: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise RuntimeError(f"expected a tensor for {name}, got {type(value).__name__}")


def _check_channels(input: torch.Tensor, **stats: torch.Tensor | None) -> None:
    """Each of ``stats`` is absent or a 1-D tensor of ``input``'s channels, dtype and device."""
    _check_tensor(input, "input")
    if input.dim() < 2 or input.numel() == 0:
        raise RuntimeError(f"batch norm expects a non-empty input of 2 or more dims: {input.shape}")
    channels = input.shape[1]
    for name, value in stats.items():
        if value is None:
            continue
        _check_tensor(value, name)
        # NOTE: float32 statistics with a half-precision input are what mixed precision uses
        dtype_ok = value.dtype in (input.dtype, torch.float32)
        if value.shape != (channels,) or not dtype_ok or value.device != input.device:
            raise RuntimeError(
                f"batch norm: {name} is {value.dtype} {tuple(value.shape)} on {value.device}, "
                f"expected {input.dtype} or float32 ({channels},) on {input.device}"
            )
