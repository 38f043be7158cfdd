"""Why torch.export could not trace a model: the reason, the model's own line, and the fix."""

from __future__ import annotations

import linecache
import os
import re
import traceback
from pathlib import Path

import torch
from torch import nn

from fxtap.errors import TraceError

try:
    import numpy as np
except ImportError:  # pragma: no cover - torch runs without numpy
    np = None  # type: ignore[assignment]

__all__ = ["export_error"]


def export_error(name: str, mode: str, exc: BaseException, *, model: nn.Module) -> TraceError:
    reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
    where = _model_frame(exc)
    if where:
        reason += f" (raised from {where})"
    fixes = []
    text = str(exc)
    layerdrop = _layerdrop(model, exc) if mode == "train" else None
    if layerdrop is not None:
        fixes.append(layerdrop)
    elif "Cache" in text or "pytree" in text.lower():
        fixes.append(
            "a value the model returns is not a pytree (a cache object): pass use_cache=False "
            "or the model's flag that turns it off in example_inputs"
        )
    if layerdrop is None:
        fixes.append("check that the model runs on example_inputs")
    fixes.append("or use tracer='fx' to take the capture path (nothing pruned)")
    return TraceError(
        f"torch.export could not trace {name} in {mode} mode: {reason}. Fix: "
        + "; ".join(fixes)
        + ".",
        module_path="",
        reason=reason,
    )


def _model_frame(exc: BaseException) -> str | None:
    """``file:line `code``` of the model's own line the failure came from: the last frame
    outside torch, numpy, the standard library and fxtap."""
    skipped = [os.path.dirname(torch.__file__), os.path.dirname(os.__file__), _PACKAGE]
    if np is not None:
        skipped.append(os.path.dirname(np.__file__))
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if not any(frame.filename.startswith(d + os.sep) for d in skipped):
            return f"{Path(frame.filename).name}:{frame.lineno} `{(frame.line or '').strip()}`"
    return None


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Config flags of transformers' LayerDrop: in train mode each layer is skipped when
#: ``torch.rand([]) < config.FLAG``, a branch on a random number that export cannot trace.
_LAYERDROP_FLAGS = ("layerdrop", "encoder_layerdrop", "decoder_layerdrop")


def _layerdrop(model: nn.Module, exc: BaseException) -> str | None:
    """The fix for an export that failed on a LayerDrop branch, or ``None``.

    Recognized by the source lines the failure was raised from (the branch, or one of the two
    lines above it, reads one of ``_LAYERDROP_FLAGS``) and by that flag being above 0 in
    ``model.config``.
    """
    config = getattr(model, "config", None)
    if config is None:
        return None
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        lineno = frame.lineno or 0
        lines = [linecache.getline(frame.filename, n) for n in range(lineno - 2, lineno + 1)]
        text = " ".join(lines)
        flags = [f for f in _LAYERDROP_FLAGS if re.search(rf"\b{re.escape(f)}\b", text)]
        values = {f: getattr(config, f, None) for f in flags}
        found = {f: v for f, v in values.items() if isinstance(v, float) and v > 0}
        if found:
            flag, value = next(iter(found.items()))
            line = next(li for li in lines if flag in li)
            where = f"{Path(frame.filename).name}:{lineno - 2 + lines.index(line)}"
            return (
                f"{type(model).__name__} skips layers at random in train mode (LayerDrop, "
                f"config.{flag}={value} at {where} `{line.strip()}`), a branch on a random "
                f"number that torch.export cannot trace: build the model with {flag}=0.0 in "
                f"its config (e.g. {type(config).__name__}(..., {flag}=0.0)) to export it in "
                "train mode without LayerDrop, or request train_return_nodes that the capture "
                "path serves (module outputs)"
            )
    return None
