"""torchaudio models (the ``[audio]`` extra): Conformer, wav2vec 2.0, Emformer RNN-T, tiny.

The same checks as the Hugging Face models of tests/test_export.py: the extractor is pruned, and
each tap equals a forward hook on the unmodified model bitwise, in eval mode and in train mode
with the same seed, gradients included. docs/zoo.md says which path each model takes.
"""

from __future__ import annotations

import copy
import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree

import fxtap
from fxtap import FeatureExtractor, LoadError, NodeNotFoundError, TraceError
from fxtap.prune import prune
from fxtap.trace import NAME_KEY
from support.audio import (
    FEATURES,
    LENGTHS,
    TARGET_LENGTHS,
    TARGETS,
    WAVES,
    conformer,
    emformer_rnnt,
    wav2vec2,
)
from support.checker import Hooks, bitwise_equal, graph_params, num_params

pytestmark = pytest.mark.audio

ta = pytest.importorskip("torchaudio")


def _check_exact(
    model: nn.Module,
    inputs: tuple[Any, ...],
    ex: FeatureExtractor,
    spec: tuple[str, str, str],
) -> None:
    """Eval and train values of the ``leaf`` and ``func`` taps and ``:output``, and gradients."""
    leaf, _, before = spec

    def reference() -> tuple[dict[str, Any], Any]:
        hooks = Hooks(model, {"leaf": leaf}, {"func": before})
        torch.manual_seed(0)
        out = model(*inputs)
        hooks.remove()
        return hooks.values, out

    model.eval()
    with torch.no_grad():
        ref, _ = reference()
        got = ex.eval()(*inputs)
    assert bitwise_equal(got["leaf"], ref["leaf"]) and bitwise_equal(got["func"], ref["func"])
    # train mode, same seed: every dropout draws the same numbers
    model.train()
    ref, out = reference()
    torch.manual_seed(0)
    got = ex.train()(*inputs)
    assert type(got["out"]) is type(out)
    assert bitwise_equal(pytree.tree_leaves(got["out"]), pytree.tree_leaves(out))
    assert bitwise_equal(got["leaf"], ref["leaf"]) and bitwise_equal(got["func"], ref["func"])
    # NOTE: one tap at a time: with both in one loss, the gradient reaching a value that
    # feeds both taps sums its three parts in another order than the hooks' clones do
    # (last bits differ)
    for key in ("leaf", "func"):
        want, grads = _param_grads(model, ref[key]), _param_grads(model, got[key])
        assert want.keys() == grads.keys() and want, key
        assert all(bitwise_equal(grads[k], want[k]) for k in grads), key


def _param_grads(model: nn.Module, value: torch.Tensor) -> dict[str, torch.Tensor]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(
        value.sum(), [p for _, p in named], retain_graph=True, allow_unused=True
    )
    return {n: g for (n, _), g in zip(named, grads) if g is not None}


def _build(model: nn.Module, taps: dict[str, str], match: str, **kwargs: Any) -> Any:
    with pytest.warns(UserWarning, match=match):
        return fxtap.create_feature_extractor(
            model,
            train_return_nodes={**taps, ":output": "out"},
            eval_return_nodes=taps,
            **kwargs,
        )


# ---------------------------------------------------------------- Conformer: torch.fx

#: leaf-module tap, functional-op tap, the module whose first input is that op's value.
CONFORMER = (
    "conformer_layers.1.conv_module.sequential.0",
    "conformer_layers.1.add",
    "conformer_layers.1.self_attn_layer_norm",
)
#: Conformer.forward builds its padding mask with a private function that reads a tensor
#: value (int(lengths.max())): fxtap records it as one node, the rest traces with torch.fx.
_MASK = r"function torchaudio\.models\.conformer\._lengths_to_padding_mask"


@pytest.mark.parametrize("with_inputs", [False, True], ids=["no_inputs", "example_inputs"])
def test_conformer_takes_the_fx_path_is_pruned_and_exact(with_inputs: bool) -> None:
    model = conformer()
    leaf, func, _ = CONFORMER
    extra = {"example_inputs": (FEATURES, LENGTHS)} if with_inputs else {}
    ex = _build(model, {leaf: "leaf", func: "func"}, _MASK, **extra)
    assert isinstance(ex, FeatureExtractor), "torch.fx did not trace the root"
    assert graph_params(ex, "eval") < num_params(model)
    assert not any(n.startswith("conformer_layers.2") for n in ex.kept["eval"])
    assert ex.outputs["eval"] == {"leaf": leaf, "func": func}
    masks = [n for n in ex.graph_for("eval").nodes if n.op == "call_function"]
    assert any(getattr(n.target, "__name__", "") == "_lengths_to_padding_mask" for n in masks)
    _check_exact(model, (FEATURES, LENGTHS), ex, CONFORMER)


def test_conformer_other_lengths_and_tracers() -> None:
    model = conformer().eval()
    # the mask node runs the function, so other lengths give other masks
    with pytest.warns(UserWarning, match=_MASK):
        ex = fxtap.create_feature_extractor(model, ["conformer_layers.0"], tracer="fx")
    short = torch.tensor([9, 4])
    hooks = Hooks(model, {"v": "conformer_layers.0"}, {})
    with torch.no_grad():
        model(FEATURES[:, :9], short)
        got = ex(FEATURES[:, :9], short)["conformer_layers.0"]
    hooks.remove()
    assert bitwise_equal(got, hooks.values["v"])
    # torch.export cannot size the mask: int(lengths.max()) is data-dependent
    with pytest.raises(TraceError, match=r"torch.export could not trace Conformer"):
        fxtap.create_feature_extractor(
            model, ["conformer_layers.0"], tracer="export", example_inputs=(FEATURES, LENGTHS)
        )


def test_conformer_extractor_copies_pickles_saves_and_runs_in_threads(tmp_path: Any) -> None:
    model = conformer().eval()
    with pytest.warns(UserWarning, match=_MASK):
        ex = fxtap.create_feature_extractor(model, {CONFORMER[1]: "v"})
    with torch.no_grad():
        want = ex(FEATURES, LENGTHS)["v"]
        for other in (copy.deepcopy(ex), pickle.loads(pickle.dumps(ex))):
            assert bitwise_equal(other(FEATURES, LENGTHS)["v"], want)
        path = fxtap.save(ex, tmp_path / "conformer.fxtap")
        try:
            loaded = fxtap.load(path)
        except LoadError as exc:  # the safe loader names what it does not allow
            assert "trust=True" in str(exc)
            loaded = fxtap.load(path, trust=True)
        assert bitwise_equal(loaded(FEATURES, LENGTHS)["v"], want)
        with ThreadPoolExecutor(4) as pool:
            runs = list(pool.map(lambda _: ex(FEATURES, LENGTHS)["v"], range(8)))
    assert all(bitwise_equal(r, want) for r in runs)


# ---------------------------------------------------------------- wav2vec 2.0

#: Names on the export path (eval mode).
WAV2VEC2 = (
    "encoder.transformer.layers.1.attention.q_proj",
    "encoder.transformer.layers.1.add",
    "encoder.transformer.layers.1.layer_norm",
)
#: what torch.fx keeps opaque: shape checks on proxies (x.ndim != 2) in the feature
#: extractor, and then in the encoder a mask built from the extractor's (opaque) lengths.
_OPAQUE = r"module 'feature_extractor'.*module 'encoder'"


def test_wav2vec2_takes_the_fx_path_with_two_opaque_modules() -> None:
    model = wav2vec2()
    # torch.fx traces the root, so fxtap takes that path; taps inside the encoder do not exist
    with pytest.warns(UserWarning, match=_OPAQUE), pytest.raises(NodeNotFoundError):
        fxtap.create_feature_extractor(model, [WAV2VEC2[0]], example_inputs=(WAVES,))
    # the outputs of the opaque modules are taps ("getitem" is the features the encoder gets),
    # exact in both modes: the opaque encoder runs the model's own LayerDrop
    taps = {"encoder": "leaf", "getitem": "func"}
    ex = _build(model, taps, _OPAQUE, example_inputs=(WAVES,))
    assert isinstance(ex, FeatureExtractor) and ex.opaque == ("feature_extractor", "encoder")
    _check_exact(model, (WAVES,), ex, ("encoder", "getitem", "encoder"))
    with pytest.warns(UserWarning, match=_OPAQUE):
        pruned = fxtap.create_feature_extractor(model, ["feature_extractor", "getitem"])
    assert num_params(pruned) < num_params(model)
    assert "encoder" not in pruned.kept["eval"] and "encoder" not in pruned.kept["train"]


def test_wav2vec2_export_path_in_eval_mode_is_pruned_and_exact() -> None:
    model = wav2vec2().eval()
    leaf, func, before = WAV2VEC2
    traced = fxtap.trace(model, training=False, tracer="export", example_inputs=(WAVES,))
    by_name = {name: node for node, name in traced.names.items()}
    # weight_norm's parametrization is one node of the positional convolution
    assert "encoder.transformer.pos_conv_embed.conv._weight_norm" in by_name
    graph = prune(traced, {"leaf": by_name[leaf], "func": by_name[func]}, class_name="W2V")
    kept = {n.meta.get(NAME_KEY) for n in graph.graph.nodes}
    assert leaf in kept and func in kept
    assert not any(str(n).startswith("encoder.transformer.layers.2") for n in kept)
    attrs = {str(n.target) for n in graph.graph.nodes if n.op == "get_attr"}
    kept_params = sum(p.numel() for name, p in graph.named_parameters() if name in attrs)
    assert 0 < kept_params < num_params(model)
    hooks = Hooks(model, {"leaf": leaf}, {"func": before})
    waves = WAVES.clone()
    model(waves)
    ref_leaf, ref_func = hooks.values["leaf"], hooks.values["func"]
    hooks.remove()
    got = graph(waves)
    assert bitwise_equal(got["leaf"], ref_leaf) and bitwise_equal(got["func"], ref_func)
    # gradients, in eval mode
    for key, want in (("leaf", ref_leaf), ("func", ref_func)):
        ref_grads, grads = _param_grads(model, want), _param_grads(model, got[key])
        assert ref_grads.keys() == grads.keys() and ref_grads, key
        assert all(bitwise_equal(grads[k], ref_grads[k]) for k in grads), key


@pytest.mark.parametrize("layer_drop", [0.1, 0.0])
def test_wav2vec2_export_fails_in_train_mode_on_layer_drop(layer_drop: float) -> None:
    # NOTE: Transformer.forward draws torch.rand(1).item() per layer in train mode, even with
    # layer_drop=0.0: export cannot guard on the drawn value (docs/zoo.md)
    model = wav2vec2(layer_drop)
    with pytest.raises(TraceError, match=r"in train mode: .*data-dependent expression"):
        fxtap.create_feature_extractor(
            model, [WAV2VEC2[0]], tracer="export", example_inputs=(WAVES,)
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fxtap.trace(model, training=False, tracer="export", example_inputs=(WAVES,))


# ---------------------------------------------------------------- Emformer RNN-T: torch.fx

#: leaf-module tap after the predictor's state, functional-op tap in the joiner, the module
#: whose first input is that op's value.
RNNT = ("predictor.output_layer_norm", "joiner.add", "joiner.activation")
RNNT_INPUTS = (FEATURES, LENGTHS, TARGETS, TARGET_LENGTHS)
#: Emformer reads sizes as ints; the predictor's LSTM layers iterate over their state.
_RNNT_OPAQUE = r"module 'transcriber.transformer'.*module 'predictor.lstm_layers.0'"


def _state(model: nn.Module) -> Any:
    with torch.no_grad():
        return model.eval()(*RNNT_INPUTS)[3]


@pytest.mark.parametrize("with_state", [False, True], ids=["without_state", "with_state"])
def test_emformer_rnnt_serves_calls_with_and_without_its_state(with_state: bool) -> None:
    # NOTE: RNNT.forward(..., predictor_state=None) tests `state is None`: traced as a
    # placeholder, the graph indexes predictor_state[0] and a call without it failed
    # ('NoneType' object is not subscriptable); the extractor now picks a graph per call
    model = emformer_rnnt()
    leaf, func, _ = RNNT
    ex = _build(model, {leaf: "leaf", func: "func"}, _RNNT_OPAQUE)
    assert isinstance(ex, FeatureExtractor), "torch.fx did not trace the root"
    assert ex.fixed_to_none == ("predictor_state",)
    assert ex.opaque == (
        "transcriber.transformer",
        "predictor.lstm_layers.0",
        "predictor.lstm_layers.1",
    )
    inputs = (*RNNT_INPUTS, _state(model)) if with_state else RNNT_INPUTS
    _check_exact(model, inputs, ex, RNNT)
    # by keyword, or None given outright, the same values
    with torch.no_grad():
        want = ex.eval()(*inputs)["func"]
        state = inputs[4] if with_state else None
        assert bitwise_equal(ex(*RNNT_INPUTS, predictor_state=state)["func"], want)
        assert bitwise_equal(ex(*RNNT_INPUTS, state)["func"], want)


def test_emformer_rnnt_copies_pickles_runs_in_threads_and_saves(tmp_path: Any) -> None:
    model = emformer_rnnt().eval()
    state = _state(model)
    with pytest.warns(UserWarning, match=_RNNT_OPAQUE):
        ex = fxtap.create_feature_extractor(
            model, {RNNT[1]: "v"}, example_inputs=(*RNNT_INPUTS, state)
        )
    assert ex.fixed_to_none == ("predictor_state",)
    calls = {False: RNNT_INPUTS, True: (*RNNT_INPUTS, state)}
    with torch.no_grad():
        want = {}
        for given, inputs in calls.items():
            hooks = Hooks(model, {}, {"v": RNNT[2]})
            model(*inputs)
            hooks.remove()
            want[given] = hooks.values["v"]
            assert bitwise_equal(ex(*inputs)["v"], want[given])
        for other in (copy.deepcopy(ex), pickle.loads(pickle.dumps(ex))):
            for given, inputs in calls.items():
                assert bitwise_equal(other(*inputs)["v"], want[given])
        with ThreadPoolExecutor(4) as pool:
            runs = list(pool.map(lambda i: (i % 2 == 1, ex(*calls[i % 2 == 1])["v"]), range(8)))
    assert all(bitwise_equal(v, want[given]) for given, v in runs)
    path = fxtap.save(ex, tmp_path / "rnnt.fxtap")
    try:
        loaded = fxtap.load(path)
    except LoadError as exc:  # the safe loader names what it does not allow
        assert "trust=True" in str(exc)
        loaded = fxtap.load(path, trust=True)
    assert loaded.fixed_to_none == ("predictor_state",)
    with torch.no_grad():
        assert all(bitwise_equal(loaded(*calls[g])["v"], want[g]) for g in calls)
