"""Tiny Hugging Face models (``from_config``, the ``[hf]`` extra) and the taps the export-path
tests check on each: ``build_hf(name)`` gives the model and its inputs, ``HF[name]`` the taps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from support.checker import Hooks


def _text(seq: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (2, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones(2, seq, dtype=torch.long)}


def _pixels(size: int = 32) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    }


_ENC = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2}
_ENC |= {"intermediate_size": 37, "vocab_size": 100, "max_position_embeddings": 64}
_DEC = {**_ENC, "num_key_value_heads": 1}
_DISTILBERT = {"dim": 32, "n_layers": 3, "n_heads": 2, "hidden_dim": 37, "vocab_size": 100}
_DISTILBERT |= {"max_position_embeddings": 64}
_GPT2 = {"n_embd": 32, "n_layer": 3, "n_head": 2, "vocab_size": 100, "n_positions": 64}
_GPT2 |= {"bos_token_id": 1, "eos_token_id": 2}
_T5 = {"d_model": 32, "d_kv": 16, "d_ff": 37, "num_layers": 3, "num_heads": 2, "vocab_size": 100}
_BART = {"d_model": 32, "encoder_layers": 3, "decoder_layers": 3, "encoder_attention_heads": 2}
_BART |= {"decoder_attention_heads": 2, "encoder_ffn_dim": 37, "decoder_ffn_dim": 37}
_BART |= {"vocab_size": 100, "max_position_embeddings": 64}
_WHISPER = {**_BART, "encoder_layers": 3, "decoder_layers": 1, "num_mel_bins": 16}
_WHISPER |= {"max_source_positions": 8, "pad_token_id": 1, "bos_token_id": 1, "eos_token_id": 2}
_WHISPER |= {"decoder_start_token_id": 1}
W2V = {**_ENC, "conv_dim": (8, 8), "conv_stride": (5, 4), "conv_kernel": (10, 4)}
W2V |= {"num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2}
# NOTE: SpecAugment masking draws its mask with numpy in train mode, which export cannot trace
W2V |= {"mask_time_prob": 0.0}
_VISION = {**_ENC, "image_size": 32, "patch_size": 8}
_SWIN = {"image_size": 32, "patch_size": 2, "embed_dim": 16, "depths": [1, 1, 1]}
_SWIN |= {"num_heads": [1, 2, 2], "window_size": 4}
_CONVNEXT = {"hidden_sizes": [8, 16, 24], "depths": [1, 1, 1], "num_stages": 3}


def build_hf(name: str) -> tuple[nn.Module, dict[str, Any]]:
    t = pytest.importorskip("transformers")
    audio = torch.rand(2, 400, generator=torch.Generator().manual_seed(0))
    mel = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0))
    builders: dict[str, Callable[[], tuple[nn.Module, dict[str, Any]]]] = {
        "bert": lambda: (t.BertModel(t.BertConfig(**_ENC)), _text()),
        "roberta": lambda: (t.RobertaModel(t.RobertaConfig(**_ENC, pad_token_id=1)), _text()),
        "distilbert": lambda: (t.DistilBertModel(t.DistilBertConfig(**_DISTILBERT)), _text()),
        "gpt2": lambda: (t.GPT2Model(t.GPT2Config(**_GPT2)), _text()),
        "llama": lambda: (t.LlamaModel(t.LlamaConfig(**_DEC)), _text()),
        "mistral": lambda: (t.MistralModel(t.MistralConfig(**_DEC)), _text()),
        "qwen2": lambda: (t.Qwen2Model(t.Qwen2Config(**_DEC)), _text()),
        "t5_encoder": lambda: (t.T5EncoderModel(t.T5Config(**_T5)), _text()),
        "t5_decoder": lambda: (
            t.T5Model(t.T5Config(**_T5)),
            {**_text(), "decoder_input_ids": _text(4)["input_ids"]},
        ),
        "bart": lambda: (t.BartModel(t.BartConfig(**_BART)), _text()),
        "vit": lambda: (t.ViTModel(t.ViTConfig(**_VISION)), _pixels()),
        "swin": lambda: (t.SwinModel(t.SwinConfig(**_SWIN)), _pixels()),
        "convnext": lambda: (t.ConvNextModel(t.ConvNextConfig(**_CONVNEXT)), _pixels()),
        "clip_vision": lambda: (t.CLIPVisionModel(t.CLIPVisionConfig(**_VISION)), _pixels()),
        "whisper_encoder": lambda: (
            t.WhisperModel(t.WhisperConfig(**_WHISPER)).get_encoder(),
            {"input_features": mel},
        ),
        "wav2vec2": lambda: (t.Wav2Vec2Model(t.Wav2Vec2Config(**W2V)), {"input_values": audio}),
    }
    return builders[name]()


#: architecture -> (leaf-module tap, functional-op tap, module whose first input is that op's
#: value, a later module the pruned extractor must not run). Names are the export path's.
HF: dict[str, tuple[str, str, str, str]] = {
    "bert": ("encoder.layer.1.attention.self.query", "encoder.layer.1.attention.output.add",
             "encoder.layer.1.attention.output.LayerNorm", "encoder.layer.2"),
    "roberta": ("encoder.layer.1.attention.self.query", "encoder.layer.1.output.add",
                "encoder.layer.1.output.LayerNorm", "encoder.layer.2"),
    "distilbert": ("transformer.layer.1.attention.q_lin", "transformer.layer.1.add",
                   "transformer.layer.1.sa_layer_norm", "transformer.layer.2"),
    "gpt2": ("h.1.ln_2", "h.1.add", "h.1.ln_2", "h.2"),
    "llama": ("layers.1.self_attn.q_proj", "layers.1.add", "layers.1.post_attention_layernorm",
              "layers.2"),
    "mistral": ("layers.1.mlp.down_proj", "layers.0.add_1", "layers.1.input_layernorm",
                "layers.2"),
    "qwen2": ("layers.1.self_attn.k_proj", "layers.1.add", "layers.1.post_attention_layernorm",
              "layers.2"),
    "t5_encoder": ("encoder.block.1.layer.0.SelfAttention.q", "encoder.block.1.layer.0.add",
                   "encoder.block.1.layer.1.layer_norm", "encoder.block.2"),
    "t5_decoder": ("decoder.block.1.layer.0.SelfAttention.q", "decoder.block.1.layer.0.add",
                   "decoder.block.1.layer.1.layer_norm", "decoder.block.2"),
    "bart": ("encoder.layers.1.self_attn.q_proj", "encoder.layers.1.add",
             "encoder.layers.1.self_attn_layer_norm", "encoder.layers.2"),
    "vit": ("layers.1.attention.q_proj", "layers.1.add", "layers.1.layernorm_after", "layers.2"),
    "swin": ("encoder.layers.1.blocks.0.attention.q_proj", "encoder.layers.1.blocks.0.add",
             "encoder.layers.1.blocks.0.layernorm_after", "encoder.layers.2"),
    "convnext": ("encoder.stages.1.layers.0.dwconv", "encoder.stages.1.layers.0.permute",
                 "encoder.stages.1.layers.0.layernorm", "encoder.stages.2"),
    "clip_vision": ("encoder.layers.1.self_attn.q_proj", "encoder.layers.1.add",
                    "encoder.layers.1.layer_norm2", "encoder.layers.2"),
    "whisper_encoder": ("layers.1.fc1", "layers.1.add", "layers.1.final_layer_norm", "layers.2"),
    "wav2vec2": ("encoder.layers.1.attention.q_proj", "encoder.layers.1.add",
                 "encoder.layers.1.layer_norm", "encoder.layers.2"),
}  # fmt: skip


def hf_reference(model: nn.Module, inputs: dict[str, Any], spec: tuple[str, ...]) -> Any:
    """The ``leaf`` tap (a module's output) and ``func`` tap (the first input of the module
    after the op) of ``spec`` (an ``HF`` row) by forward hooks, and the model's output."""
    leaf, _, before, _ = spec
    hooks = Hooks(model, {"leaf": leaf}, {"func": before})
    torch.manual_seed(0)
    out = model(**inputs, **_no_cache(model))
    hooks.remove()
    return hooks.values, out


def _no_cache(model: nn.Module) -> dict[str, Any]:
    import inspect

    return (
        {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    )
