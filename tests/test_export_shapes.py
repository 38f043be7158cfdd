"""Shapes on the export path: dynamic dims, the input checks, and inputs a model implies.

Each extractor is built at one shape and called at others; every value is checked bitwise
against forward hooks on the unmodified model (eval mode, and train mode with the same seed).
Hugging Face models are the tiny configs of ``tests/test_export.py`` (marker ``hf``).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.export import Dim

import fxtap
from fxtap import FeatureExtractor, InputShapeError, InvalidArgumentError
from fxtap.trace import check_batch
from support.checker import bitwise_equal, graph_params, num_params
from support.hf import HF, build_hf, hf_reference


def _text(batch: int, seq: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seq)
    ids = torch.randint(3, 100, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long)}


def _audio(batch: int, length: int) -> dict[str, torch.Tensor]:
    return {"input_values": torch.rand(batch, length, generator=torch.Generator().manual_seed(1))}


def _mel(batch: int, frames: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    return {"input_features": torch.rand(batch, 16, frames, generator=g)}


def _image(batch: int, height: int, width: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(height)
    return {"pixel_values": torch.rand(batch, 3, height, width, generator=g)}


def _t5(batch: int, seq: int) -> dict[str, torch.Tensor]:
    return {**_text(batch, seq), "decoder_input_ids": _text(batch, seq // 2 + 1)["input_ids"]}


#: architecture -> (inputs it is built with, two other calls). Whisper's encoder checks its
#: input is 2 * max_source_positions frames long, so only its batch size varies; ViT's
#: image size varies with interpolate_pos_encoding=True, fixed at build time, and a build
#: image other than the config's square (docs/tracing.md: at 32 by 32 ViT skips the
#: interpolation, and torch.export keeps no guard for that branch).
SHAPES: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {
    "bert": (_text(2, 12), [_text(3, 7), _text(2, 20)]),
    "gpt2": (_text(2, 12), [_text(3, 7), _text(2, 20)]),
    "llama": (_text(2, 12), [_text(3, 7), _text(2, 20)]),
    "t5_encoder": (_text(2, 12), [_text(3, 7), _text(2, 20)]),
    "t5_decoder": (_t5(2, 12), [_t5(3, 7), _t5(2, 20)]),
    "whisper_encoder": (_mel(2), [_mel(3), _mel(5)]),
    "wav2vec2": (_audio(2, 400), [_audio(3, 320), _audio(2, 720)]),
    "vit": (
        {**_image(2, 32, 48), "interpolate_pos_encoding": True},
        [
            {**_image(3, 40, 40), "interpolate_pos_encoding": True},
            {**_image(2, 48, 24), "interpolate_pos_encoding": True},
        ],
    ),
}


def _model(arch: str) -> nn.Module:
    model, _ = build_hf(arch)
    if arch == "wav2vec2":  # LayerDrop makes train mode untraceable (test_export.py)
        model.config.layerdrop = 0.0
    return model


def _check(ex: Any, model: nn.Module, arch: str, inputs: dict[str, Any]) -> None:
    tensors = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    extra = {k: v for k, v in inputs.items() if k not in tensors}
    for training in (False, True):
        model.train(training)
        with torch.no_grad():
            ref, _ = hf_reference(model, {**tensors, **extra}, HF[arch])
            torch.manual_seed(0)
            got = ex.train(training)(**tensors)
        for key in ("leaf", "func"):
            assert got[key].shape == ref[key].shape, (arch, training, key)
            assert bitwise_equal(got[key], ref[key]), (arch, training, key)


@pytest.mark.hf
@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_built_at_one_shape_runs_at_others(arch: str) -> None:
    model = _model(arch).eval()
    built, others = SHAPES[arch]
    leaf, func, _, _ = HF[arch]
    ex = fxtap.create_feature_extractor(model, {leaf: "leaf", func: "func"}, example_inputs=built)
    assert isinstance(ex, FeatureExtractor), "the export path was not taken"
    for inputs in others:
        _check(ex, model, arch, inputs)


def test_whisper_frames_and_vit_size_are_fixed_and_say_so() -> None:
    pytest.importorskip("transformers")
    model = _model("whisper_encoder").eval()
    ex = fxtap.create_feature_extractor(model, ["layers.1"], example_inputs=_mel(2))
    match = r"'input_features' has size 20 in dim 2, .*built for size 16 .*dynamic_shapes="
    with pytest.raises(InputShapeError, match=match):
        ex(**_mel(2, 20))
    model = _model("vit").eval()
    ex = fxtap.create_feature_extractor(model, ["layers.1"], example_inputs=_image(2, 32, 32))
    with pytest.raises(InputShapeError, match=r"'pixel_values' has size 40 in dim 2"):
        ex(**_image(2, 40, 40))


class FixedLength(nn.Module):
    """Reads its length as a constant: the graph is only right at the length it was built for.

    Export of ``x[:, : self.length]`` with a dynamic length would keep that slice, and a
    shorter input would give a tap of the wrong shape (flaubert's case); the check refuses it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("pos", torch.randn(12, 4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.fc(x + self.pos.view(1, 12, 4)) * mask[..., None]


def test_a_specialized_length_raises_before_the_graph_runs() -> None:
    x, mask = torch.randn(2, 12, 4), torch.ones(2, 12)
    ex = fxtap.create_feature_extractor(
        FixedLength(), ["fc"], example_inputs=(x, mask), tracer="export"
    )
    assert ex(torch.randn(5, 12, 4), torch.ones(5, 12))["fc"].shape == (5, 12, 4)
    match = (
        r"input 'x' has size 7 in dim 1, but the extractor was built for size 12 there .*"
        r"build the extractor with example_inputs of the shapes you will use, or pass "
        r"dynamic_shapes="
    )
    with pytest.raises(InputShapeError, match=match):
        ex(torch.randn(2, 7, 4), torch.ones(2, 7))
    with pytest.raises(InputShapeError, match=r"'mask' has 3 dims .*built for 2"):
        ex(x, torch.ones(2, 12, 1))


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fc(a + b)


def test_dims_export_found_equal_must_stay_equal() -> None:
    ex = fxtap.create_feature_extractor(
        Pair(), ["fc"], example_inputs=(torch.randn(2, 5, 4), torch.randn(2, 5, 4)), tracer="export"
    )
    assert ex(torch.randn(3, 9, 4), torch.randn(3, 9, 4))["fc"].shape == (3, 9, 4)
    with pytest.raises(
        InputShapeError,
        match=r"'b' has size 8 in dim 1, but it must equal dim 1 of input 'a' \(9\)",
    ):
        ex(torch.randn(3, 9, 4), torch.randn(3, 8, 4))


def test_dynamic_shapes_are_handed_to_torch_export() -> None:
    kwargs = {"a": torch.randn(2, 5, 4), "b": torch.randn(2, 5, 4)}
    # static everywhere: another batch size is refused
    ex = fxtap.create_feature_extractor(
        Pair(),
        ["fc"],
        example_inputs=kwargs,
        dynamic_shapes={"a": None, "b": None},
        tracer="export",
    )
    with pytest.raises(InputShapeError, match=r"'a' has size 3 in dim 0, .*built for size 2"):
        ex(a=torch.randn(3, 5, 4), b=torch.randn(3, 5, 4))
    length = Dim("length", max=16)
    shapes = {"a": {1: length}, "b": {1: length}}
    ex = fxtap.create_feature_extractor(
        Pair(), ["fc"], example_inputs=kwargs, dynamic_shapes=shapes, tracer="export"
    )
    assert ex(a=torch.randn(2, 9, 4), b=torch.randn(2, 9, 4))["fc"].shape == (2, 9, 4)
    with pytest.raises(InputShapeError, match=r"'a' has size 20 in dim 1, .*sizes in \[\d, 16\]"):
        ex(a=torch.randn(2, 20, 4), b=torch.randn(2, 20, 4))
    with pytest.raises(InvalidArgumentError, match=r"dynamic_shapes names 'aa'.*closest: 'a'"):
        fxtap.create_feature_extractor(
            Pair(), ["fc"], example_inputs=kwargs, dynamic_shapes={"aa": None}, tracer="export"
        )


def test_an_extractor_exports_again_with_its_dims_dynamic() -> None:
    """torch.export of a built extractor keeps its dynamic dims dynamic, and its fixed ones
    fixed: the input check becomes constraints of the new program, not guards on the example."""
    a, b = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    ex = fxtap.create_feature_extractor(Pair(), ["fc"], example_inputs=(a, b), tracer="export")
    auto = {0: Dim.AUTO, 1: Dim.AUTO}
    program = torch.export.export(ex, (a, b), dynamic_shapes=(auto, auto))
    for shape in ((3, 9, 4), (2, 20, 4)):
        x, y = torch.randn(shape), torch.randn(shape)
        with torch.no_grad():
            assert bitwise_equal(program.module()(x, y), ex(x, y))
    x, mask = torch.randn(2, 12, 4), torch.ones(2, 12)
    fixed = fxtap.create_feature_extractor(
        FixedLength(), ["fc"], example_inputs=(x, mask), tracer="export"
    )
    dynamic = {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}
    with pytest.raises(
        torch._dynamo.exc.UserError, match=r"specialized it to be a constant \(12\)"
    ):
        torch.export.export(
            fixed, (x, mask), dynamic_shapes=(dynamic, {0: Dim.DYNAMIC, 1: Dim.DYNAMIC})
        )


class OldBatchCheck(nn.Module):
    """The batch check of extractors saved before ``check_shapes``, as their graphs call it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_batch(x, 2, 64, "x")
        return x * 2


def test_the_old_batch_check_exports_again_with_the_batch_dynamic() -> None:
    program = torch.export.export(
        OldBatchCheck(), (torch.randn(2, 3),), dynamic_shapes=({0: Dim.AUTO},)
    )
    x = torch.randn(5, 3)
    assert bitwise_equal(program.module()(x), x * 2)
    with pytest.raises(InputShapeError, match=r"'x' has size 70 in dim 0"):
        OldBatchCheck()(torch.randn(70, 3))


# ---------------------------------------------------------------- no options


@pytest.mark.hf
@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "vit"])
def test_transformers_models_are_pruned_with_no_options(arch: str) -> None:
    model, inputs = build_hf(arch)
    leaf, func, _, later = HF[arch]
    ex = fxtap.create_feature_extractor(model.eval(), {leaf: "leaf", func: "func"})
    assert isinstance(ex, FeatureExtractor) and ex.prunes, "captured, not pruned"
    assert graph_params(ex, "eval") < num_params(model)
    assert not any(n == later or n.startswith(later + ".") for n in ex.kept["eval"])
    _check(ex, model, arch, inputs)


@pytest.mark.hf
def test_flaubert_built_at_12_tokens_gives_the_shape_and_values_of_7() -> None:
    """Exported with only the batch dynamic, flaubert returned a (3, 5, 2048) tap for 7 tokens
    with no error; with every dim dynamic it is the model's value."""
    pytest.importorskip("transformers")
    from support.hf_zoo import tiny_model

    model = tiny_model("flaubert").eval()
    ids = torch.randint(3, 100, (3, 12), generator=torch.Generator().manual_seed(0))
    ex = fxtap.create_feature_extractor(model, ["layer_norm2.0"], example_inputs={"input_ids": ids})
    assert isinstance(ex, FeatureExtractor)
    seen: dict[str, torch.Tensor] = {}
    handle = model.layer_norm2[0].register_forward_hook(lambda m, a, o: seen.setdefault("v", o))
    with torch.no_grad():
        model(input_ids=ids[:, :7])
        handle.remove()
        got = ex(input_ids=ids[:, :7])["layer_norm2.0"]
    assert got.shape == seen["v"].shape == (3, 7, 2048) and bitwise_equal(got, seen["v"])
