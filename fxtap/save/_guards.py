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


def native_batch_norm_legit_no_training(
    input: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    momentum: float,
    eps: float,
) -> Any:
    """``aten._native_batch_norm_legit_no_training`` after the checks its kernel lacks."""
    _check_channels(input, weight=weight, bias=bias, mean=running_mean, var=running_var)
    return _aten._native_batch_norm_legit_no_training.default(
        input, weight, bias, running_mean, running_var, momentum, eps
    )


def native_batch_norm_legit(
    input: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    training: bool,
    momentum: float,
    eps: float,
) -> Any:
    """``aten._native_batch_norm_legit`` (updates the running statistics) after the checks."""
    _check_channels(input, weight=weight, bias=bias, mean=running_mean, var=running_var)
    return _aten._native_batch_norm_legit.default(
        input, weight, bias, running_mean, running_var, training, momentum, eps
    )


def native_batch_norm_legit_no_stats(
    input: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> Any:
    """``aten._native_batch_norm_legit.no_stats`` after the checks its kernel lacks; without
    running statistics only training mode has statistics to use (the batch's)."""
    _check_channels(input, weight=weight, bias=bias)
    if training is not True:
        raise RuntimeError("batch norm without running statistics needs training=True")
    return _aten._native_batch_norm_legit.no_stats(input, weight, bias, training, momentum, eps)


def fft_r2c(self: torch.Tensor, dim: list[int], normalization: int, onesided: bool) -> Any:
    """``aten._fft_r2c`` with its dims checked: distinct, each within the input's dims."""
    _check_fft(self, dim, normalization)
    return _aten._fft_r2c.default(self, dim, normalization, onesided)


def fft_c2r(self: torch.Tensor, dim: list[int], normalization: int, last_dim_size: int) -> Any:
    """``aten._fft_c2r`` with its dims and output size checked."""
    _check_fft(self, dim, normalization)
    if not isinstance(last_dim_size, int) or last_dim_size < 1:
        raise RuntimeError(f"_fft_c2r: last_dim_size {last_dim_size!r} is not a positive size")
    return _aten._fft_c2r.default(self, dim, normalization, last_dim_size)


#: op key -> its checked stand-in.
GUARDS: dict[str, Callable[..., Any]] = {
    "aten::_native_batch_norm_legit_no_training.default": native_batch_norm_legit_no_training,
    "aten::_native_batch_norm_legit.default": native_batch_norm_legit,
    "aten::_native_batch_norm_legit.no_stats": native_batch_norm_legit_no_stats,
    "aten::_fft_r2c.default": fft_r2c,
    "aten::_fft_c2r.default": fft_c2r,
}
_OPS = {
    native_batch_norm_legit_no_training: _aten._native_batch_norm_legit_no_training.default,
    native_batch_norm_legit: _aten._native_batch_norm_legit.default,
    native_batch_norm_legit_no_stats: _aten._native_batch_norm_legit.no_stats,
    fft_r2c: _aten._fft_r2c.default,
    fft_c2r: _aten._fft_c2r.default,
}


def unguarded(target: Any) -> Any:
    """The op a stand-in checks, or ``target`` itself (the saver writes the op)."""
    try:
        return _OPS.get(target, target)
    except TypeError:  # an unhashable target
        return target


def _check_tensor(value: Any, name: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise RuntimeError(f"expected a tensor for {name}, got {type(value).__name__}")


def _check_fft(value: torch.Tensor, dim: list[int], normalization: int) -> None:
    _check_tensor(value, "self")
    ndim = value.dim()
    if not dim or any(not -ndim <= d < ndim for d in dim):
        raise RuntimeError(f"fft: dims {dim} out of range for a {ndim}-D input")
    if len({d % ndim for d in dim}) != len(dim) or normalization not in (0, 1, 2):
        raise RuntimeError(f"fft: dims {dim} repeat, or normalization {normalization} unknown")


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
