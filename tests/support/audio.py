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
