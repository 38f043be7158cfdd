"""The generated Hugging Face zoo: AutoModel types on tiny configs, pruned and exact.

``make test`` runs ``hf_zoo.SAMPLE`` (25 architectures across text, vision, audio and
encoder-decoder families); ``FXTAP_THOROUGH=1`` runs every type transformers maps to
``AutoModel``, skipping the ones whose tiny model does not run eagerly. Each model gets a leaf
tap in the middle, the input of a later module (the value a functional op such as a residual add
produced) and ``:output``; values are compared bitwise with forward hooks on the unmodified model
in eval and train mode (same seed), and so are the gradients of a loss over the taps.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree

import fxtap
from fxtap.extractor import FeatureExtractor
from support.checker import loss_grads
from support.hf_zoo import SAMPLE, example_inputs, model_types, tiny_model

THOROUGH = os.environ.get("FXTAP_THOROUGH") == "1"
TYPES = model_types() if THOROUGH else list(SAMPLE)

#: Types of the sample that fxtap does not prune, each with its reason (also in docs/zoo.md).
KNOWN: dict[str, str] = {
    "wav2vec2": (
        "eval mode: the exported graph's residual add feeding encoder.layers.0.layer_norm "
        "differs from eager by one ulp (1.2e-7), while the leaf tap before it is bitwise equal"
    ),
}


def _bitwise(a: Any, b: Any) -> bool:
    la, lb = pytree.tree_leaves(a), pytree.tree_leaves(b)
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor):
            if x.shape != y.shape or x.dtype != y.dtype:
                return False
            xb = x.detach().contiguous().reshape(-1).view(torch.uint8)
            if not torch.equal(xb, y.detach().contiguous().reshape(-1).view(torch.uint8)):
                return False
        elif x != y:
            return False
    return True


def _no_cache(model: nn.Module) -> dict[str, Any]:
    params = inspect.signature(model.forward).parameters
    return {"use_cache": False} if "use_cache" in params else {}


def _calls(model: nn.Module, inputs: dict[str, Any]) -> list[str]:
    """Leaf modules in call order, each called exactly once with a tensor input and output."""
    order: list[str] = []
    count: dict[str, int] = {}
    handles = []
    for path, mod in model.named_modules():
        # parametrizations (weight norm) compute a weight, not a value of the forward
        if path and not list(mod.children()) and ".parametrizations." not in path:

            def hook(m: nn.Module, args: Any, out: Any, path: str = path) -> None:
                ok = args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor)
                count[path] = count.get(path, 0) + 1
                if ok and args[0].is_floating_point() and path not in order:
                    order.append(path)

            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(**inputs, **_no_cache(model))
    finally:
        for h in handles:
            h.remove()
    return [p for p in order if count[p] == 1]


def _reference(model: nn.Module, inputs: dict[str, Any], leaf: str, before: str) -> Any:
    values: dict[str, Any] = {}
    h1 = model.get_submodule(leaf).register_forward_hook(
        lambda m, a, o: values.setdefault("leaf", o.clone())
    )
    h2 = model.get_submodule(before).register_forward_pre_hook(
        lambda m, a: values.setdefault("inp", a[0])
    )
    try:
        torch.manual_seed(0)
        out = model(**inputs, **_no_cache(model))
    finally:
        h1.remove()
        h2.remove()
    return values, out


def _build(model_type: str) -> tuple[nn.Module, dict[str, Any]]:
    try:
        model = tiny_model(model_type)
        inputs = example_inputs(model)
        with torch.no_grad():
            model(**inputs, **_no_cache(model))
    except Exception as exc:
        if model_type in SAMPLE:
            raise
        pytest.skip(f"{model_type}: the tiny model does not run eagerly ({type(exc).__name__})")
    return model, inputs


@pytest.mark.hf
@pytest.mark.slow
@pytest.mark.parametrize(
    "model_type",
    [
        pytest.param(t, marks=pytest.mark.xfail(strict=True, reason=KNOWN[t])) if t in KNOWN else t
        for t in TYPES
    ],
)
def test_generated_model_is_pruned_and_exact(model_type: str) -> None:
    model, inputs = _build(model_type)
    calls = _calls(model, inputs)
    assert len(calls) >= 4, calls
    leaf, before = calls[len(calls) * 2 // 5], calls[len(calls) * 3 // 5]
    taps = {leaf: "leaf", f"{before}:input": "inp"}
    ex = fxtap.create_feature_extractor(
        model,
        train_return_nodes={**taps, ":output": "out"},
        eval_return_nodes=taps,
        example_inputs=inputs,
    )
    assert isinstance(ex, FeatureExtractor), f"{model_type} was not pruned"
    # the eval graph (no :output) holds fewer parameters than the model
    targets = {str(n.target) for n in ex.graph_for("eval").nodes if n.op == "get_attr"}
    kept = sum(p.numel() for name, p in ex.named_parameters() if name in targets)
    assert kept < sum(p.numel() for p in model.parameters()), "nothing was pruned"
    with torch.no_grad():
        ref, _ = _reference(model, inputs, leaf, before)
        got = ex.eval()(**inputs)
    assert _bitwise(got["leaf"], ref["leaf"]) and _bitwise(got["inp"], ref["inp"])
    model.train()
    ex.train()
    ref, out = _reference(model, inputs, leaf, before)
    ref_grads = loss_grads(model, ref["leaf"].float().sum() + ref["inp"].float().sum())
    torch.manual_seed(0)
    got = ex(**inputs)
    assert _bitwise(got["out"], out)
    assert _bitwise(got["leaf"], ref["leaf"]) and _bitwise(got["inp"], ref["inp"])
    grads = loss_grads(model, got["leaf"].float().sum() + got["inp"].float().sum())
    assert grads.keys() == ref_grads.keys() and grads
    assert all(_bitwise(grads[k], ref_grads[k]) for k in grads)
