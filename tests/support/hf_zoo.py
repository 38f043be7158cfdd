"""Tiny configs and example inputs for every transformers model type (the generated HF zoo).

``tiny_config(model_type)`` shrinks the library's default config: widths, depths, heads,
vocabulary and image sizes become small, nested text/vision/audio configs are shrunk the same
way, and layer drop is off. ``example_inputs(model)`` builds inputs from the forward signature.
Nothing is downloaded.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import torch

__all__ = ["SAMPLE", "TEXT", "example_inputs", "model_types", "tiny_config", "tiny_model"]

#: The inputs of a text-only call of a multimodal model (whose image tokens the generator
#: does not place in ``input_ids``).
TEXT = ("input_ids", "attention_mask", "decoder_input_ids")

# A fixed sample across text (encoder, decoder, encoder-decoder), vision, audio and multimodal
# families, run by make test; FXTAP_THOROUGH=1 runs every model type.
SAMPLE = (
    "albert", "bart", "bert", "clip_vision_model", "convnext", "deberta-v2", "deit",
    "dinov2", "distilbert", "electra", "gpt2", "gpt_neox", "llama", "mistral", "mobilevit",
    "mpnet", "qwen2", "roberta", "segformer", "beit", "t5", "vit", "wav2vec2", "whisper",
    "xlm-roberta",
    # hybrid linear attention (an export-only branch), an argument read before the first one
    "qwen3_5_text", "mistral_large4_text",
)  # fmt: skip

_WIDTH = 32
_INT_FIELDS = {
    "rotary_dim": 16,
    # widths
    "hidden_size": _WIDTH, "d_model": _WIDTH, "n_embd": _WIDTH, "dim": _WIDTH,
    "embed_dim": _WIDTH, "embedding_size": _WIDTH, "projection_dim": _WIDTH,
    "text_embed_dim": _WIDTH, "vision_embed_dim": _WIDTH, "word_embed_proj_dim": _WIDTH,
    "d_kv": 16, "head_dim": 16, "kv_channels": 16, "attention_head_dim": 16,
    "intermediate_size": 64, "ffn_dim": 64, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
    "n_inner": 64, "d_ff": 64, "hidden_dim": 64, "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    # depths
    "num_hidden_layers": 2, "n_layer": 2, "num_layers": 2, "n_layers": 2,
    "encoder_layers": 2, "decoder_layers": 2, "num_decoder_layers": 2, "num_encoder_layers": 2,
    # heads
    "num_attention_heads": 2, "n_head": 2, "n_heads": 2, "num_heads": 2,
    "encoder_attention_heads": 2, "decoder_attention_heads": 2, "num_key_value_heads": 1,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
    # vocabulary and positions
    "vocab_size": 128, "max_position_embeddings": 128, "n_positions": 128,
    "max_source_positions": 64, "max_target_positions": 64, "type_vocab_size": 2,
    # state-space layers: heads x head size is expand x width
    "num_groups": 1, "num_kv_shared_layers": 0, "mamba_n_heads": 4, "mamba_num_heads": 4, "n_mamba_heads": 4, "mamba_headdim": 16,
    # images
    "image_size": 32, "patch_size": 4, "num_channels": 3, "window_size": 2,
}  # fmt: skip
# Fields no table entry names, by the end of their name (the first match wins).
_INT_PATTERNS = (
    (r"key_value_heads$|kv_heads$", 1), (r"heads$", 2), (r"head_dim$|d_head$", 16),
    (r"lora_rank$", 16), (r"intermediate_size$|ffn_dim$", 64),
    (r"hidden_size$|embed_dim$|hidden_size_global$|embedding_dim$", _WIDTH),
    (r"^num_\w*layers$|^n_\w*layers$|_layers$", 2), (r"experts$", 4), (r"^n_group$|^topk_group$", 1),
    (r"d_state$", 16), (r"chunk_size$", 16), (r"first_k_dense_replace$", 1),
    (r"^vocab_size|vocab$", 128), (r"per_layer_input$", 16),
)  # fmt: skip
_DEPTHS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_LISTS = ("hidden_sizes", "depths", "embed_dims", "num_heads")
# SpecAugment's masks are drawn with numpy in train mode (tests/test_export.py checks them apart).
_ZERO = (
    "layerdrop", "encoder_layerdrop", "decoder_layerdrop", "drop_path_rate",
    "mask_time_prob", "mask_feature_prob",
)  # fmt: skip
_NESTED = ("text_config", "vision_config", "audio_config", "encoder", "decoder", "backbone_config")
_TOKENS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id", "cls_token_id")  # fmt: skip


def model_types() -> list[str]:
    """Every model type transformers maps to ``AutoModel``, in alphabetical order."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    return sorted(MODEL_MAPPING_NAMES)


def tiny_config(model_type: str) -> Any:
    """The library's default config of ``model_type`` shrunk to a few thousand parameters.

    The default config's dict is shrunk and the config built again from it, as from a
    ``config.json``, so that the fields a config derives from others (``qk_head_dim``,
    per-layer type lists) follow; configs that refuse their shrunk dict are shrunk in place.
    """
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type)
    try:
        return type(config).from_dict(_shrink_dict(config.to_dict()))
    except Exception:
        _shrink(config)
        return config


def tiny_model(model_type: str, *, seed: int = 0) -> torch.nn.Module:
    """``AutoModel.from_config(tiny_config(model_type))`` with weights drawn under ``seed``."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    model = AutoModel.from_config(tiny_config(model_type), attn_implementation="eager")
    return model.eval()


def example_inputs(model: torch.nn.Module, *, batch: int = 2, seq: int = 7) -> dict[str, Any]:
    """Keyword inputs for ``model.forward``: every required argument and the usual optional ones.

    Raises:
        ValueError: the signature asks for an argument this builder does not know.
    """
    config: Any = model.config  # type: ignore[attr-defined]
    params = inspect.signature(model.forward).parameters
    gen = torch.Generator().manual_seed(1)
    text = getattr(config, "text_config", None) or config
    vision = getattr(config, "vision_config", None) or config
    vocab = int(getattr(text, "vocab_size", 128) or 128)
    out: dict[str, Any] = {}
    for name, p in params.items():
        required = p.default is inspect.Parameter.empty and p.kind not in (
            inspect.Parameter.VAR_KEYWORD,
            inspect.Parameter.VAR_POSITIONAL,
        )
        if name in ("input_ids", "decoder_input_ids"):
            out[name] = torch.randint(3, vocab, (batch, seq), generator=gen)
        elif name == "attention_mask" and "input_ids" in out:
            out[name] = torch.ones(batch, seq, dtype=torch.long)
        elif name == "pixel_values":
            size = getattr(vision, "image_size", 32)
            size = size if isinstance(size, int) else int(size[0])
            channels = int(getattr(vision, "num_channels", 3))
            out[name] = torch.randn(batch, channels, size, size, generator=gen)
        elif name == "input_values" and hasattr(config, "num_mel_bins"):  # a spectrogram
            frames = int(getattr(config, "max_length", 64))
            out[name] = torch.randn(batch, frames, int(config.num_mel_bins), generator=gen)
        elif name == "input_values":
            out[name] = torch.randn(batch, 4000, generator=gen)
        elif name == "input_features":
            mels = int(getattr(config, "num_mel_bins", 80))
            frames = 2 * int(getattr(config, "max_source_positions", 64))
            out[name] = torch.randn(batch, mels, frames, generator=gen)
        elif required:
            raise ValueError(f"{type(model).__name__}.forward needs {name!r}")
    if not out:
        raise ValueError(f"{type(model).__name__}.forward takes no input this builder knows")
    return out


def _tiny_int(key: str, value: int) -> int:
    """The small value of an integer field, by its name (``value`` when no rule matches)."""
    if value <= 0:
        return value
    small = _INT_FIELDS.get(key)
    if small is None:
        for pattern, size in _INT_PATTERNS:
            if re.search(pattern, key):
                small = size
                break
    return value if small is None else min(value, small)


def _shrink_dict(d: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """A config dict (``to_dict()``) shrunk, nested configs too; lists per layer are cut.

    Attributes a config derives in ``__post_init__`` (not fields of its dataclass, such as
    ``qk_head_dim``) are left out, so that they are derived again from the shrunk fields.
    """
    fields = _fields(d.get("model_type"))
    out: dict[str, Any] = {}
    for key, value in d.items():
        if fields and key not in fields and key != "model_type":
            continue
        if isinstance(value, bool) or value is None:
            out[key] = value
        elif isinstance(value, int):
            out[key] = _tiny_int(key, value)
        elif isinstance(value, float) and key in _ZERO:
            out[key] = 0.0
        elif isinstance(value, list) and key in _INT_FIELDS and _ints(value):
            out[key] = [_tiny_int(key, v) for v in value]  # (height, width): YOLOS' image_size
        elif isinstance(value, list) and key in _LISTS:
            out[key] = [_small(key, v) for v in value][:4]
        elif isinstance(value, dict) and "model_type" in value and depth < 3:
            out[key] = _shrink_dict(value, depth + 1)
        else:
            out[key] = value
    _agree(out, d)
    return out


def _agree(out: dict[str, Any], d: dict[str, Any]) -> None:
    """Make the shrunk fields of ``out`` agree with each other (``d``: the default dict)."""
    for key in _DEPTHS:  # per-layer lists follow the number of layers
        old, new = d.get(key), out.get(key)
        if isinstance(old, int) and isinstance(new, int) and new < old:
            for k, v in out.items():
                if isinstance(v, list) and len(v) == old and k not in _LISTS:
                    out[k] = v[:new]
    vocab = out.get("vocab_size")
    if isinstance(vocab, int):
        for key in _TOKENS:
            token = out.get(key)
            if isinstance(token, int) and not isinstance(token, bool) and token >= vocab:
                out[key] = vocab - 1
    heads, width = out.get("num_attention_heads"), out.get("hidden_size")
    if isinstance(heads, int) and isinstance(width, int) and heads and width % heads:
        out["num_attention_heads"] = heads = 1
    if "kv_lora_rank" in out and isinstance(heads, int):
        out["num_key_value_heads"] = heads  # latent attention expands keys to every head


def _fields(model_type: Any) -> set[str]:
    """The dataclass fields of ``model_type``'s config class (empty when not a dataclass)."""
    import dataclasses

    from transformers import CONFIG_MAPPING

    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        return set()
    cls = CONFIG_MAPPING[model_type]
    return {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()


def _shrink(config: Any, depth: int = 0) -> None:
    for key, value in list(vars(config).items()):
        if key in _INT_FIELDS and isinstance(value, int) and not isinstance(value, bool):
            setattr(config, key, min(value, _INT_FIELDS[key]) if value > 0 else value)
        elif key in _ZERO and isinstance(value, float):
            setattr(config, key, 0.0)
        elif key in _LISTS and isinstance(value, list):
            setattr(config, key, [_small(key, v) for v in value][:4])
        elif key in _NESTED and depth < 3 and hasattr(value, "to_dict"):
            _shrink(value, depth + 1)
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int):
        for key in _TOKENS:
            token = getattr(config, key, None)
            if isinstance(token, int) and token >= vocab:
                setattr(config, key, vocab - 1)
    heads = getattr(config, "num_attention_heads", None)
    width = getattr(config, "hidden_size", None)
    if isinstance(heads, int) and isinstance(width, int) and heads and width % heads:
        config.num_attention_heads = 1


def _ints(value: list[Any]) -> bool:
    return bool(value) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _small(key: str, value: Any) -> Any:
    if not isinstance(value, int):
        return value
    return (
        {"hidden_sizes": 16, "embed_dims": 16, "depths": 1, "num_heads": 1}[key] if value else value
    )
