"""The ``outputs`` field of a saved file: by mode, output key -> node name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fxtap.errors import LoadError
from fxtap.save._schema import as_list, as_object, as_string, check_keys

__all__ = ["check_outputs", "encode_outputs"]


def encode_outputs(outputs: Mapping[str, Mapping[str | int, str]]) -> dict[str, Any]:
    """By mode, output key -> node name, as JSON.

    An object while every key is a string; else a list of ``[key, name]`` pairs, since JSON
    object keys are strings and an integer key (``{"layer1": 1}``) must come back an integer.
    """
    return {
        mode: dict(outs) if all(type(k) is str for k in outs) else [[k, n] for k, n in outs.items()]
        for mode, outs in outputs.items()
    }


def check_outputs(
    raw: Any, modes: tuple[str, ...], *, required: bool = False
) -> dict[str, dict[str | int, str]]:
    """``outputs``, as ``encode_outputs`` writes it: keys are strings or integers, names strings."""
    raw_outputs = as_object(raw, "outputs")
    check_keys(raw_outputs, set(modes), None, "outputs")
    outputs: dict[str, dict[str | int, str]] = {}
    for mode in modes:
        where = f"outputs.{mode}"
        body = raw_outputs[mode]
        pairs = list(body.items()) if isinstance(body, dict) else as_list(body, where)
        outs: dict[str | int, str] = {}
        for i, pair in enumerate(pairs):
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise LoadError(f"{where}[{i}]: an output is a [key, node name] pair")
            key, name = pair
            if not (type(key) is str or (type(key) is int and abs(key) < 2**63)):
                raise LoadError(f"{where}[{i}]: output key {key!r:.40} is not a string or integer")
            if type(key) is str:
                as_string(key, where)
            if key in outs:
                raise LoadError(f"{where}: output key {key!r:.40} appears twice")
            outs[key] = as_string(name, f"{where}.{key}")
        if required and not outs:
            raise LoadError(f"{where}: no output is requested")
        outputs[mode] = outs
    return outputs
