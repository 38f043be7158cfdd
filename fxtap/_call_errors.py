"""Why a call of an extractor failed: an input of the wrong kind, dtype or shape, in one line.

torch's own errors for these (``expected input[1, 1, 32, 32] to have 3 channels``, ``Input
type (unsigned char) and bias type (float) should be the same``, an assert message that baked
in ``Proxy(getitem_2)`` at trace time) name neither the input nor what fits. Extractors pass
their failing calls here (``fxtap._compat.explain_calls``), which turns such failures into one
typed error.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import fx

from fxtap._shapes import suggest_input_shape, without_proxies
from fxtap.errors import (
    FxtapError,
    InputShapeError,
    InputTypeError,
    close_matches,
    format_choices,
)

__all__ = ["explain_call_failure"]

#: Set while a failing call is being explained (``explain_call_failure`` is not re-entered).
_EXPLAINING: contextvars.ContextVar[bool] = contextvars.ContextVar("explaining", default=False)

#: What torch raises when an input does not fit (shape checks, dtype checks, traced asserts).
_FAILURES = (RuntimeError, AssertionError, TypeError, ValueError, IndexError, AttributeError)

#: Words of torch's dtype complaints: "Input type (unsigned char) and bias type (float) should
#: be the same", "expected scalar type Float but found Byte", "not implemented for 'Byte'".
_DTYPE_WORDS = re.compile(r"dtype|scalar type|Input type|should be the same|not implemented for")


def explain_call_failure(
    module: fx.GraphModule, args: tuple[Any, ...], kwargs: Mapping[str, Any], exc: Exception
) -> Exception | None:
    """The typed error for a call that failed because of its inputs; ``None`` for others.

    An input that is not a tensor (a NumPy array, an image object) or whose dtype is not the
    model's gives ``InputTypeError``; a single tensor input of a shape the model refuses, when
    another shape fits (checked on fake tensors), gives ``InputShapeError`` with that shape.
    """
    if isinstance(exc, FxtapError) or not isinstance(exc, _FAILURES) or _EXPLAINING.get():
        # NOTE: the shape search below calls the module again on fake inputs; a failure there
        # must not be explained in turn (each level would try every shape: exponential time)
        return None
    token = _EXPLAINING.set(True)
    try:
        return _explain(module, args, kwargs, exc)
    finally:
        _EXPLAINING.reset(token)


def _explain(
    module: fx.GraphModule, args: tuple[Any, ...], kwargs: Mapping[str, Any], exc: Exception
) -> Exception | None:
    if isinstance(exc, AssertionError) and "Proxy(" not in str(exc):
        return None  # the model's own assert says what it checks; only trace-time text is fixed
    model = type(module).__name__
    names = [str(n.target) for n in module.graph.find_nodes(op="placeholder")]
    unknown = [k for k in kwargs if k not in names]
    if unknown and isinstance(exc, TypeError):
        return _unknown_keyword(model, unknown[0], names)
    given = dict(zip(names, args))
    given.update(kwargs)
    reason = _reason(exc)
    weights = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    for name, value in given.items():
        if isinstance(value, torch.Tensor) or value is None:
            continue
        if isinstance(value, (bool, int, float, str, tuple, list, dict)):
            continue
        kind = f"{type(value).__module__}.{type(value).__qualname__}"
        shape = getattr(value, "shape", None)
        what = f"a {kind}" + (f" of shape {_shape(shape)}" if shape is not None else "")
        fix = " Convert it first, e.g. torch.from_numpy(x).float()" if "numpy" in kind else ""
        return InputTypeError(f"input {name!r} of {model} is {what}; expected a torch.Tensor.{fix}")
    for name, value in given.items():
        if (
            isinstance(value, torch.Tensor)
            and weights is not None
            and value.dtype != weights
            and _DTYPE_WORDS.search(reason)
        ):
            dtype = str(value.dtype).removeprefix("torch.")
            want = str(weights).removeprefix("torch.")
            scale = " / 255 for 0-255 images" if value.dtype == torch.uint8 else ""
            return InputTypeError(
                f"input {name!r} of {model} is a {dtype} tensor; expected {want}, the dtype of "
                f"its weights. Convert it first, e.g. x.to(torch.{want}){scale}"
            )
    tensors = [v for v in given.values() if isinstance(v, torch.Tensor)]
    if len(given) != 1 or len(tensors) != 1:
        return None
    (name, value), shape = next(iter(given.items())), tuple(tensors[0].shape)
    fits = suggest_input_shape(module, rejected=[shape])
    if fits is None and not isinstance(exc, AssertionError):
        return None
    example = f", e.g. {_shape(fits)}" if fits else ""
    end = "" if reason.endswith(("!", "?")) else "."
    return InputShapeError(
        f"input {name!r} of shape {_shape(shape)} does not fit {model}: {reason}{end} "
        f"Pass an input of the shape it expects{example}"
    )


def _unknown_keyword(model: str, name: str, names: list[str]) -> InputTypeError:
    """A keyword input the extractor was not built with (bert's ``token_type_ids`` when the
    extractor was exported from ``input_ids`` and ``attention_mask`` alone)."""
    hint = close_matches(name, names)
    closest = f" (closest: {format_choices(hint)})" if hint else ""
    return InputTypeError(
        f"keyword input {name!r} is not an input of this extractor of {model}, which takes "
        f"{format_choices(names)}{closest}: the example inputs it was built from left "
        f"{name!r} out, or gave it a value that is not a tensor (such as use_cache=False), "
        f"which the graph holds fixed. Build it with example_inputs= holding every tensor "
        f"keyword you will pass (e.g. example_inputs={{..., {name!r}: tensor}}; on the "
        f"command line: --input), or leave {name!r} out of the call"
    )


def _reason(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = without_proxies(lines[0] if lines else type(exc).__name__)
    return text.rstrip(".") if text.endswith(".") else text


def _shape(shape: Any) -> str:
    return "x".join(str(int(d)) for d in shape) or "scalar"
