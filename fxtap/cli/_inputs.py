"""Example-input specs such as ``1x3x224x224:float16``, parsed without importing torch.

The argument parser reads ``--input`` and ``--dtype`` through this module, so ``fxtap --help``
and usage errors answer before torch is imported; ``fxtap.cli._models`` turns specs into tensors.
"""

from __future__ import annotations

import argparse
import difflib
from dataclasses import dataclass

__all__ = ["DEFAULT_INPUT", "DTYPE_NAMES", "InputSpec", "head_parser", "parse_dtype", "parse_input"]

#: The example input used when none is given: one 224x224 RGB image.
DEFAULT_INPUT = "1x3x224x224"
#: dtype names accepted by ``--input SHAPE:DTYPE`` and ``--dtype`` -> torch's name for them.
DTYPE_NAMES: dict[str, str] = {
    "float32": "float32",
    "float": "float32",
    "float16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "float64": "float64",
    "double": "float64",
    "int64": "int64",
    "long": "int64",
    "int32": "int32",
    "int": "int32",
    "uint8": "uint8",
    "bool": "bool",
}


@dataclass(frozen=True)
class InputSpec:
    """One example input: a shape and, optionally, a dtype name (else ``--dtype``, else float32).

    >>> parse_input("1x3x64x64:half")
    InputSpec(shape=(1, 3, 64, 64), dtype='float16')
    """

    shape: tuple[int, ...]
    dtype: str | None = None

    def __str__(self) -> str:
        text = "x".join(map(str, self.shape))
        return f"{text}:{self.dtype}" if self.dtype else text


def parse_input(text: str) -> InputSpec:
    """Parse ``"1x3x224x224"`` or ``"1x3x224x224:float16"`` into an ``InputSpec``.

    Raises:
        ValueError: not positive integers separated by ``x``, or an unknown dtype.
    """
    shape_text, _, dtype_text = text.strip().partition(":")
    parts = shape_text.lower().split("x")
    if not shape_text or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(
            f"input shape {text!r} is not positive integers separated by 'x'; expected e.g. "
            f"{DEFAULT_INPUT} or {DEFAULT_INPUT}:float16"
        )
    return InputSpec(tuple(int(p) for p in parts), parse_dtype(dtype_text) if dtype_text else None)


def parse_dtype(text: str) -> str:
    """Parse a dtype name such as ``half`` (``torch.`` prefix allowed) into torch's name.

    Raises:
        ValueError: an unknown name; lists the closest known names.
    """
    key = text.strip().lower().removeprefix("torch.")
    if key not in DTYPE_NAMES:
        close = difflib.get_close_matches(key, DTYPE_NAMES, n=3)
        hint = f"; closest: {', '.join(map(repr, close))}" if close else ""
        raise ValueError(
            f"dtype {text!r} is not known{hint}. Expected one of "
            f"{', '.join(map(repr, DTYPE_NAMES))}"
        )
    return DTYPE_NAMES[key]


def head_parser() -> argparse.ArgumentParser:
    """``--head``, for ``nodes``, ``render`` and ``bench`` of a saved tail."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--head",
        metavar="FILE",
        default=None,
        help="when MODEL is the tail saved by 'fxtap split', the head saved with it: the "
        "tail's input is the head's output on --input (default: head.fxtap beside the tail)",
    )
    return parser
