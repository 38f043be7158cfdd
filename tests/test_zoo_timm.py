"""Smaller timm models can be tapped too, without timm's own fx registries (optional).

timm ships lists of modules and functions its own feature extraction keeps opaque; none of
them is used here: fxtap's automatic fallback has to find what cannot be traced by itself.
Each model is built with ``pretrained=False`` and a 5-class head, and checked like the
torchvision zoo (``tests/test_zoo.py``): 10 random nodes per mode, a middle node and the last
node, bitwise against the shared checker's independent capture, in eval and train mode.
Skipped when timm is not installed; ``make test-timm`` installs it and runs this file.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.test_zoo import check_mode, pick, quiet

timm = pytest.importorskip("timm")

pytestmark = [pytest.mark.slow, pytest.mark.timm]

#: Convolutional models that take any input size: checked at 64x64.
FLEXIBLE = [
    "resnet10t", "resnet18d", "resnext26ts", "seresnext26ts", "regnetx_002", "regnety_002",
    "mobilenetv3_small_050", "mobilenetv2_035", "mnasnet_small", "lcnet_035",
    "efficientnet_lite0", "tinynet_e", "ghostnet_050", "densenet121", "dla34", "dpn48b",
    "cspresnet50", "darknet17", "ese_vovnet19b_slim", "rexnet_100", "repvgg_a0",
    "mobileone_s0", "convnext_atto", "convnextv2_atto", "edgenext_xx_small", "poolformer_s12",
    "nf_resnet26", "eca_resnet33ts", "gcresnext26ts", "skresnet18", "res2net50_14w_8s",
    "resnest14d", "selecsls42b", "hardcorenas_a", "fbnetc_100", "spnasnet_100",
    "semnasnet_050", "fastvit_t8", "repghostnet_050", "hgnetv2_b0", "starnet_s1",
]  # fmt: skip
#: Models whose position embeddings or window sizes fix the input: checked at their size.
FIXED = [
    "vit_tiny_patch16_224", "deit_tiny_patch16_224", "levit_128s", "mixer_s32_224",
    "efficientformer_l1", "pit_ti_224", "xcit_nano_12_p16_224",
]  # fmt: skip


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=5)


def inputs_for(name: str, model: nn.Module) -> list[torch.Tensor]:
    if name in FLEXIBLE:
        return [torch.rand(2, 3, 64, 64)]
    size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    return [torch.rand(2, *size)]


@pytest.mark.parametrize("name", FLEXIBLE + FIXED)
def test_timm_model_can_be_tapped(name: str) -> None:
    import fxtap

    model = build(name)
    (train_names, eval_names), _ = quiet(lambda: fxtap.get_graph_node_names(model))
    ex, _ = quiet(
        lambda: fxtap.create_feature_extractor(
            model,
            train_return_nodes=pick(train_names, seed=sum(map(ord, name + "train"))),
            eval_return_nodes=pick(eval_names, seed=sum(map(ord, name + "eval"))),
        )
    )
    for mode in ("eval", "train"):
        check_mode(ex, model, mode, inputs_for(name, model))


def test_enough_timm_models() -> None:
    assert len(set(FLEXIBLE + FIXED)) >= 40
