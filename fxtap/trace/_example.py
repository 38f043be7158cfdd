"""Example inputs a model implies: what the export path traces with when none are given.

A Hugging Face model names its main input (``main_input_name``: ``input_ids``,
``pixel_values``, ``input_values``, ``input_features``) and its config gives the sizes that
input must have (vocabulary, image size, channels, mel bins). ``implied_inputs`` builds a
small batch from them, seeded so that every build traces the same values; the model's own
``dummy_inputs`` are the last resort. Every dimension of these inputs is exported dynamic
(``Dim.AUTO``), so the extractor then runs other batch sizes and lengths the model allows.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["implied_inputs"]

#: Batch size of implied inputs: 2, since torch.export specializes a dimension of size 1.
BATCH = 2
#: Token count of implied text inputs, and of decoder inputs.
TOKENS = 8


def implied_inputs(model: nn.Module) -> dict[str, Any] | None:
    """Keyword inputs for ``model`` from its ``main_input_name`` and config, or ``None``.

    Returns:
        A dict of tensors (``{"input_ids": ..., "attention_mask": ...}``) the export path can
        trace with, or ``None`` when the model says nothing of its inputs (no ``config``).

    >>> import transformers
    >>> m = transformers.BertModel(transformers.BertConfig(num_hidden_layers=1))
    >>> {k: tuple(v.shape) for k, v in implied_inputs(m).items()}
    {'input_ids': (2, 8), 'attention_mask': (2, 8)}
    """
    config = getattr(model, "config", None)
    if config is None:
        return None
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtin forwards
        return None
    main = getattr(model, "main_input_name", None)
    builder = _BUILDERS.get(str(main))
    generator = torch.Generator().manual_seed(0)
    inputs = builder(config, generator) if builder is not None and main in params else None
    if inputs is None:
        return _dummy_inputs(model, params)
    if "attention_mask" in params and "input_ids" in inputs:
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if "decoder_input_ids" in params and getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = _token_ids(config, generator)["input_ids"]
    return inputs


def _token_ids(config: Any, generator: torch.Generator) -> dict[str, Any]:
    text = _text_config(config)
    vocab = int(getattr(text, "vocab_size", 0) or 0)
    positions = int(getattr(text, "max_position_embeddings", 0) or 0)
    tokens = min(TOKENS, positions) if positions > 1 else TOKENS
    # NOTE: ids from 3 up leave the usual special tokens (pad, bos, eos) out of the example
    low = 3 if vocab > 8 else 0
    high = max(vocab, low + 1)
    ids = torch.randint(low, high, (BATCH, tokens), generator=generator)
    return {"input_ids": ids}


def _pixels(config: Any, generator: torch.Generator) -> dict[str, Any]:
    vision = getattr(config, "vision_config", None) or config
    size = getattr(vision, "image_size", None) or 32
    height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
    channels = int(getattr(vision, "num_channels", 3) or 3)
    shape = (BATCH, channels, int(height), int(width))
    return {"pixel_values": torch.rand(shape, generator=generator)}


def _waveform(config: Any, generator: torch.Generator) -> dict[str, Any]:
    # the shortest waveform the feature encoder turns into several frames, or 400 samples
    length = 4
    for kernel, stride in reversed(
        list(zip(_ints(config, "conv_kernel"), _ints(config, "conv_stride")))
    ):
        length = (length - 1) * stride + kernel
    return {"input_values": torch.rand(BATCH, max(length, 400), generator=generator)}


def _features(config: Any, generator: torch.Generator) -> dict[str, Any]:
    bins = int(getattr(config, "num_mel_bins", None) or getattr(config, "feature_size", None) or 80)
    # NOTE: Whisper's encoder checks its input is exactly 2 * max_source_positions long
    frames = 2 * int(getattr(config, "max_source_positions", 0) or 0) or 16
    return {"input_features": torch.rand(BATCH, bins, frames, generator=generator)}


_BUILDERS: Mapping[str, Callable[[Any, torch.Generator], dict[str, Any] | None]] = {
    "input_ids": _token_ids,
    "pixel_values": _pixels,
    "input_values": _waveform,
    "input_features": _features,
}


def _text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    try:
        return get() if callable(get) else config
    except Exception:  # pragma: no cover - configs whose text part cannot be found
        return config


def _ints(config: Any, name: str) -> list[int]:
    value = getattr(config, name, None) or ()
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else []


def _dummy_inputs(model: nn.Module, params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The model's own ``dummy_inputs``, when it has them and its forward takes them."""
    try:
        dummy = getattr(model, "dummy_inputs", None)
    except Exception:  # a property that fails on this config
        return None
    if not isinstance(dummy, Mapping) or not dummy:
        return None
    if not all(k in params and isinstance(v, torch.Tensor) for k, v in dummy.items()):
        return None
    return dict(dummy)
