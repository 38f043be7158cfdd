"""timm's fx feature extraction on fxtap: FeatureGraphNet gives the same maps as on torchvision.

``timm.create_model(name, features_only=True, feature_cls="fx")`` builds a
``FeatureGraphNet``, which asks torchvision's ``create_feature_extractor`` for the stages the
model declares, with integer output keys and timm's own leaf modules and autowrapped
functions. Here the same call runs once with torchvision underneath and once with fxtap
(monkeypatched where timm imports it, ``timm.layers._fx``); the feature maps must be
bitwise equal, in eval mode, with the same seeded weights.

One model per timm model module, the smallest of each (``pretrained=False``). The 60 that
build fastest run by default; ``FXTAP_THOROUGH=1`` adds the other 18. Modules left out:
beit, deepseek_vit, gemma4_vit, inception_resnet_v2, inception_v4, naflexvit, nasnet,
pnasnet, qwen3_vit, tresnet, vgg, vision_transformer_sam (smallest model over 30 M parameters),
hardcorenas, hrnet, mvitv2, twins (torchvision's extractor cannot build them from timm's
feature info), hiera (no input size runs it).
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

timm = pytest.importorskip("timm")
timm_fx = pytest.importorskip("timm.layers._fx")

pytestmark = pytest.mark.timm

#: (timm model module, its smallest model, input side): built fastest, run by default.
MODELS = [
    ("byobnet", "test_byobnet", 64),
    ("convit", "convit_tiny", 224),
    ("convmixer", "convmixer_768_32", 64),
    ("convnext", "test_convnext", 64),
    ("cpubone", "cpubone_nano", 64),
    ("cspnet", "cs3darknet_focus_s", 64),
    ("cspnext", "cspnext_tiny", 64),
    ("deit", "deit_tiny_patch16_224", 224),
    ("densenet", "densenet121", 64),
    ("dla", "dla46x_c", 64),
    ("dpn", "dpn48b", 64),
    ("edgenext", "edgenext_xx_small", 64),
    ("efficientformer", "efficientformer_l1", 224),
    ("efficientnet", "test_efficientnet", 64),
    ("efficientvim", "efficientvim_m1", 64),
    ("efficientvit_mit", "efficientvit_b0", 64),
    ("efficientvit_msra", "efficientvit_m0", 64),
    ("fasternet", "fasternet_t0", 64),
    ("ghostnet", "ghostnet_050", 64),
    ("hgnet", "hgnetv2_b0", 64),
    ("iformer", "iformer_t", 64),
    ("inception_next", "inception_next_atto", 64),
    ("inception_v3", "inception_v3", 299),
    ("lcnetv2", "lcnetv2_small", 64),
    ("levit", "levit_128s", 224),
    ("lowformer", "lowformer_b0", 64),
    ("mambaout", "test_mambaout", 64),
    ("maxxvit", "test_coatnet", 160),
    ("metaformer", "poolformerv2_s12", 64),
    ("mlp_mixer", "gmlp_ti16_224", 224),
    ("mobilenetv3", "mobilenetv3_small_050", 64),
    ("mobilevit", "mobilevit_xxs", 64),
    ("nest", "nest_tiny", 224),
    ("nfnet", "test_nfnet", 64),
    ("pit", "pit_ti_224", 224),
    ("pvt_v2", "pvt_v2_b0", 64),
    ("rdnet", "rdnet_tiny", 64),
    ("regnet", "regnetx_002", 64),
    ("repghost", "repghostnet_050", 64),
    ("repvit", "repvit_m1", 64),
    ("res2net", "res2next50", 64),
    ("resnest", "resnest14d", 64),
    ("resnet", "test_resnet", 64),
    ("resnetv2", "resnetv2_18", 64),
    ("rexnet", "rexnet_100", 64),
    ("senet", "legacy_seresnet18", 64),
    ("sequencer", "sequencer2d_s", 64),
    ("shvit", "shvit_s1", 64),
    ("sknet", "skresnet18", 64),
    ("starnet", "starnet_s050", 64),
    ("swiftformer", "swiftformer_xs", 64),
    ("tiny_vit", "tiny_vit_5m_224", 64),
    ("visformer", "visformer_tiny", 224),
    ("vision_transformer", "test_vit", 64),
    ("vision_transformer_hybrid", "vit_tiny_r_s16_p8_224", 224),
    ("vision_transformer_relpos", "test_vit_relpos", 160),
    ("vovnet", "ese_vovnet19b_slim_dw", 64),
    ("xception", "legacy_xception", 64),
    ("xception_aligned", "xception41p", 64),
    ("xcit", "xcit_nano_12_p8_224", 64),
]  # fmt: skip
#: The rest, with FXTAP_THOROUGH=1.
THOROUGH = [
    ("byoanet", "halonet_h1", 256),
    ("cait", "cait_xxs24_224", 224),
    ("coat", "coat_tiny", 224),
    ("crossvit", "crossvit_tiny_240", 64),
    ("csatv2", "csatv2", 64),
    ("davit", "davit_tiny", 64),
    ("efficientformer_v2", "efficientformerv2_s0", 224),
    ("eva", "vit_tiny_patch16_dinov3_qkvb", 64),
    ("fastvit", "fastvit_t8", 64),
    ("focalnet", "focalnet_tiny_srf", 64),
    ("gcvit", "gcvit_xxtiny", 224),
    ("hieradet_sam2", "sam2_hiera_tiny", 64),
    ("swin_transformer", "swin_tiny_patch4_window7_224", 224),
    ("swin_transformer_v2", "swinv2_tiny_window8_256", 256),
    ("swin_transformer_v2_cr", "swinv2_cr_tiny_224", 224),
    ("tnt", "tnt_s_legacy_patch16_224", 224),
    ("vitamin", "vitamin_small_224", 224),
    ("volo", "volo_d1_224", 224),
]  # fmt: skip
SELECTED = MODELS + (THOROUGH if os.environ.get("FXTAP_THOROUGH") == "1" else [])


def features(name: str, create: object, side: int) -> tuple[list[torch.Tensor], object]:
    """The feature maps of ``name`` built with ``create`` underneath timm, seeded weights."""
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        # Warnings about what the fallback made opaque, or timm's deprecations, are not the point.
        warnings.simplefilter("ignore")
        patch.setattr(timm_fx, "_create_feature_extractor", create)
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, features_only=True, feature_cls="fx")
        model.eval()
        torch.manual_seed(1)
        x = torch.rand(1, 3, side, side)
        with torch.no_grad():
            maps = model(x)
    return list(maps), model.graph_module


@pytest.mark.parametrize(("module", "name", "side"), SELECTED, ids=[m[1] for m in SELECTED])
def test_feature_graph_net_on_fxtap_equals_torchvision(module: str, name: str, side: int) -> None:
    from torchvision.models.feature_extraction import create_feature_extractor as torchvision_cfe

    import fxtap

    assert name in timm.list_models(module=module)
    want, reference = features(name, torchvision_cfe, side)
    got, extractor = features(name, fxtap.create_feature_extractor, side)
    assert isinstance(extractor, fxtap.FeatureExtractor)
    assert not isinstance(reference, fxtap.FeatureExtractor)
    assert len(got) == len(want) >= 1
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"feature {i}: {a.shape} vs {b.shape}"
        assert torch.equal(a, b), f"feature {i} of {name} differs"


def test_one_model_per_module() -> None:
    modules = [m for m, _, _ in MODELS + THOROUGH]
    assert len(set(modules)) == len(modules)
    assert len(MODELS) >= 60
