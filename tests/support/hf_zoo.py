"""Tiny configs and example inputs for every transformers model type (the generated HF zoo).

``tiny_config(model_type)`` shrinks the library's default config: widths, depths, heads,
vocabulary and image sizes become small, nested text/vision/audio configs are shrunk the same
way, and layer drop is off. ``example_inputs(model)`` builds inputs from the forward signature.
Nothing is downloaded.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = ["SAMPLE", "example_inputs", "model_types", "tiny_config", "tiny_model"]

# A fixed sample across text (encoder, decoder, encoder-decoder), vision, audio and multimodal
# families, run by make test; FXTAP_THOROUGH=1 runs every model type.
SAMPLE = (
    "albert", "bart", "bert", "clip_vision_model", "convnext", "deberta-v2", "deit",
    "dinov2", "distilbert", "electra", "gpt2", "gpt_neox", "llama", "mistral", "mobilevit",
    "mpnet", "qwen2", "roberta", "segformer", "beit", "t5", "vit", "wav2vec2", "whisper",
    "xlm-roberta",
)  # fmt: skip

_WIDTH = 32
_INT_FIELDS = {
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
    # images
    "image_size": 32, "patch_size": 4, "num_channels": 3, "window_size": 2,
}  # fmt: skip
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
    """The library's default config of ``model_type`` shrunk to a few thousand parameters."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type)
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


def _shrink(config: Any, depth: int = 0) -> None:
    for key, value in list(vars(config).items()):
        if key in _INT_FIELDS and isinstance(value, int) and not isinstance(value, bool):
            setattr(config, key, min(value, _INT_FIELDS[key]) if value > 0 else value)
        elif key in _ZERO and isinstance(value, float):
            setattr(config, key, 0.0)
        elif key in ("hidden_sizes", "depths", "embed_dims", "num_heads") and isinstance(
            value, list
        ):
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


def _small(key: str, value: Any) -> Any:
    if not isinstance(value, int):
        return value
    return (
        {"hidden_sizes": 16, "embed_dims": 16, "depths": 1, "num_heads": 1}[key] if value else value
    )


def survey(model_type: str) -> dict[str, Any]:
    """One row of docs/zoo.md's generated table: how fxtap builds ``model_type`` on a tiny config.

    Returns ``{"type", "status", "reason", "kept", "total", "build_s"}``; status is ``pruned``,
    ``captured``, ``fails`` (fxtap raised) or ``no eager run`` (the tiny model itself fails).
    """
    import time
    import warnings

    import fxtap
    from fxtap.extractor import FeatureExtractor

    row: dict[str, Any] = {"type": model_type, "reason": "", "kept": None, "total": None}
    try:
        model = tiny_model(model_type)
        inputs = example_inputs(model)
        with torch.no_grad():
            model(**inputs)
        leaves = [p for p, m in model.named_modules() if p and not list(m.children())]
    except Exception as exc:
        return {**row, "status": "no eager run", "reason": _reason(exc), "build_s": None}
    tap = leaves[len(leaves) // 2]
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ex = fxtap.create_feature_extractor(model, [tap], example_inputs=inputs)
    except Exception as exc:
        return {**row, "status": "fails", "reason": _reason(exc), "build_s": None}
    build = time.perf_counter() - start
    total = sum(p.numel() for p in model.parameters())
    if isinstance(ex, FeatureExtractor):
        targets = {str(n.target) for n in ex.graph_for("eval").nodes if n.op == "get_attr"}
        kept = sum(p.numel() for n, p in ex.named_parameters() if n in targets)
        return {**row, "status": "pruned", "kept": kept, "total": total, "build_s": build}
    why = next((str(w.message) for w in caught), "")
    return {**row, "status": "captured", "reason": _reason(why), "total": total, "build_s": build}


def _reason(exc: Any) -> str:
    text = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
    text = " ".join(text.split())
    return text[:160] + ("…" if len(text) > 160 else "")


def table(rows: list[dict[str, Any]]) -> str:
    """docs/zoo.md's generated table from ``survey`` rows."""
    lines = [
        "| model type | result | parameters kept (middle tap) | build (s) | reason |",
        "|---|---|---:|---:|---|",
    ]
    for r in rows:
        kept = f"{r['kept']:,} of {r['total']:,}" if r["kept"] is not None else ""
        build = f"{r['build_s']:.2f}" if r["build_s"] is not None else ""
        reason = r["reason"].replace("|", "\\|")
        lines.append(f"| `{r['type']}` | {r['status']} | {kept} | {build} | {reason} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python tests/support/hf_zoo.py OUT.json [FIRST LAST]
    import json
    import sys
    import warnings

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    names = model_types()
    lo, hi = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (0, len(names))
    import signal

    def _timeout(*_: Any) -> None:
        raise TimeoutError("over 60 s")

    signal.signal(signal.SIGALRM, _timeout)
    found = []
    for name in names[lo:hi]:
        signal.alarm(60)
        try:
            found.append(survey(name))
        except TimeoutError:
            found.append(
                {
                    "type": name,
                    "status": "fails",
                    "reason": "over 60 s",
                    "kept": None,
                    "total": None,
                    "build_s": None,
                }
            )
        signal.alarm(0)
        with open(sys.argv[1], "w", encoding="utf-8") as f:
            json.dump(found, f, indent=1)
