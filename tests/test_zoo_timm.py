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

from support.zoo import FIXED, FLEXIBLE, build_timm, check_mode, pick, quiet

timm = pytest.importorskip("timm")

pytestmark = [pytest.mark.slow, pytest.mark.timm]


def inputs_for(name: str, model: nn.Module) -> list[torch.Tensor]:
    if name in FLEXIBLE:
        return [torch.rand(2, 3, 64, 64)]
    size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    return [torch.rand(2, *size)]


@pytest.mark.parametrize("name", FLEXIBLE + FIXED)
def test_timm_model_can_be_tapped(name: str) -> None:
    import fxtap

    model = build_timm(name)
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
