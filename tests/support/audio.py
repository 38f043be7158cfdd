"""torchaudio models on tiny configs (the ``[audio]`` extra) and their inputs; callers skip
when torchaudio is missing."""

from __future__ import annotations

import torch
from torch import nn

_G = torch.Generator().manual_seed(0)
FEATURES = torch.randn(2, 20, 16, generator=_G)
LENGTHS = torch.tensor([20, 15])
WAVES = torch.randn(2, 400, generator=_G)


def conformer() -> nn.Module:
    import torchaudio as ta

    torch.manual_seed(0)
    return ta.models.Conformer(
        input_dim=16, num_heads=2, ffn_dim=32, num_layers=4, depthwise_conv_kernel_size=3
    )


def wav2vec2(layer_drop: float = 0.1) -> nn.Module:
    import torchaudio as ta

    torch.manual_seed(0)
    return ta.models.wav2vec2_model(
        extractor_mode="group_norm",
        extractor_conv_layer_config=[(8, 10, 5), (8, 3, 2)],
        extractor_conv_bias=False,
        encoder_embed_dim=16,
        encoder_projection_dropout=0.1,
        encoder_pos_conv_kernel=16,
        encoder_pos_conv_groups=2,
        encoder_num_layers=4,
        encoder_num_heads=2,
        encoder_attention_dropout=0.1,
        encoder_ff_interm_features=32,
        encoder_ff_interm_dropout=0.1,
        encoder_dropout=0.1,
        encoder_layer_norm_first=False,
        encoder_layer_drop=layer_drop,
        aux_num_out=None,
    )


TARGETS = torch.randint(0, 10, (2, 5), generator=_G)
TARGET_LENGTHS = torch.tensor([5, 3])


def emformer_rnnt() -> nn.Module:
    """The Emformer RNN-T (torchaudio's streaming recognizer), 10 symbols, two layers each."""
    import torchaudio as ta

    torch.manual_seed(0)
    return ta.models.emformer_rnnt_model(
        input_dim=16,
        encoding_dim=16,
        num_symbols=10,
        segment_length=4,
        right_context_length=2,
        time_reduction_input_dim=16,
        time_reduction_stride=2,
        transformer_num_heads=2,
        transformer_ffn_dim=16,
        transformer_num_layers=2,
        transformer_dropout=0.1,
        transformer_activation="gelu",
        transformer_left_context_length=4,
        transformer_max_memory_size=0,
        transformer_weight_init_scale_strategy="depthwise",
        transformer_tanh_on_mem=True,
        symbol_embedding_dim=8,
        num_lstm_layers=2,
        lstm_layer_norm=True,
        lstm_layer_norm_epsilon=1e-3,
        lstm_dropout=0.1,
    )
