"""Tests of fxtap.trace's fallback: automatic leaves, autowrap, eager checks (capture: test_capture)."""

from __future__ import annotations

import inspect
import pickle
import re
import warnings
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_tracing

import fxtap
from fxtap import MistraceError, NodeNotFoundError, TraceError, create_feature_extractor
from fxtap.names import node_table
from fxtap.trace import _fallback as fallback_module
from support.checker import bitwise_equal, capture_reference, preserved
from support.models import ListRoot

# --- fixture models -------------------------------------------------------------------------------


def scale_by_width(x: torch.Tensor) -> torch.Tensor:
    """Calls ``int()`` on a traced value: untraceable unless autowrapped."""
    return x * int(x.shape[-1])


def repeat_by_length(x: torch.Tensor) -> torch.Tensor:
    """Calls ``len()`` on a traced value: untraceable unless autowrapped."""
    return torch.cat([x] * len(x), dim=0)[: x.shape[0]]


class SignGate(nn.Module):
    """Branches on the value of its input: untraceable by torch.fx."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        if y.sum() > 0:
            return y.relu()
        return -y


class Inner(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.gate = SignGate(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.norm(x)) + x


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.inner = Inner(width)
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.inner(x)).tanh()


class DeepControlFlow(nn.Module):
    """Value-dependent branches at depth 1 (``head``) and depth 3 (``block.inner.gate``)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Linear(4, width)
        self.drop = nn.Dropout(0.5)
        self.block = Block(width)
        self.head = SignGate(width)
        self.out = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.stem(x).relu())
        x = self.block(x)
        return self.out(self.head(x) * 2)


class Helpers(nn.Module):
    """Calls two plain functions that use ``int()`` and ``len()`` on traced values."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = scale_by_width(self.a(x))
        return self.b(repeat_by_length(y)).sigmoid()


class TracingShortcut(nn.Module):
    """Takes a different path while torch.fx traces it: traces cleanly, computes the wrong thing."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if is_fx_tracing():
            return y
        return y * 3


class Noise(nn.Module):
    """Draws noise without a traced argument: torch.fx bakes one draw into the graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn(4)


class Stage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shortcut = TracingShortcut()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.shortcut(x))


class SilentMistraces(nn.Module):
    """Two silent mis-traces: ``stage.shortcut`` (depth 2) and ``noise`` (depth 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage = Stage()
        self.noise = Noise()
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.noise(self.stage(x)))


class ParentCodeMistrace(nn.Module):
    """The parent's own code mis-traces before calling a faithful child."""

    def __init__(self) -> None:
        super().__init__()
        self.child = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_fx_tracing():
            x = x + 1
        return self.child(x)


class WrapsParent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.parent = ParentCodeMistrace()
        self.tail = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.parent(x))


class RootMistrace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if is_fx_tracing() else self.fc(x) * 2


# --- helpers --------------------------------------------------------------------------------------


def build(model: nn.Module, nodes: Any, match: str, **kwargs: Any) -> Any:
    """``create_feature_extractor`` expecting the fallback's warning (tests run warnings as errors)."""
    with pytest.warns(UserWarning, match=match) as record:
        ex = create_feature_extractor(model, nodes, **kwargs)
    # the warning points at the caller, not inside fxtap
    assert all(w.filename == __file__ for w in record)
    return ex


def check_against_reference(
    ex: Any,
    model: nn.Module,
    inputs: Sequence[Any],
    *,
    leaf_modules: Sequence[str] = (),
    autowrap_functions: Sequence[Any] = (),
) -> None:
    """Each output equals bitwise its value in an independent run of the unmodified model.

    The reference is the shared checker's ``capture_reference`` with the fallback's leaves
    and functions given explicitly (no fallback involved), cross-checked there against forward
    hooks on the eager model.
    """
    kwargs = {"leaf_modules": list(leaf_modules), "autowrap_functions": list(autowrap_functions)}
    for mode in ("train", "eval"):
        training = mode == "train"
        ex.train(training)
        ex.graph.lint()
        reference, output = capture_reference(
            model, inputs, training=training, tracer_kwargs=kwargs
        )
        with preserved(model), torch.no_grad():
            torch.manual_seed(0)
            outputs = ex(*inputs)
        assert set(outputs) == set(ex.outputs[mode])
        for key, name in ex.outputs[mode].items():
            expected = output if name == ":output" else reference[name]
            assert bitwise_equal(outputs[key], expected), f"{mode} output {key!r} ({name!r})"


def count_traces(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = fallback_module.trace_with_options

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(fallback_module, "trace_with_options", counted)
    return calls


# --- automatic leaves -----------------------------------------------------------------------------


def test_control_flow_at_several_depths_becomes_leaves() -> None:
    torch.manual_seed(0)
    model = DeepControlFlow()
    nodes = ["stem", "block.inner.norm", "block.inner.gate", "block.inner.add", "head", "out"]
    ex = build(model, nodes, r"kept 2 part\(s\) opaque", keep_traces=True)
    assert ex.opaque == ("block.inner.gate", "head")
    assert ex.full["eval"].leaves == ("block.inner.gate", "head")
    assert ex.full["eval"].wrapped == ()
    # code around the leaves is still traced: the add inside ``block.inner`` is a node
    assert "block.inner.add" in ex.kept["eval"]
    check_against_reference(ex, model, [torch.randn(2, 4)], leaf_modules=ex.opaque)


def test_warning_names_modules_reasons_source_and_fix() -> None:
    with pytest.warns(UserWarning) as record:
        create_feature_extractor(DeepControlFlow(), ["out"])
    text = str(record[0].message)
    lines, first = inspect.getsourcelines(SignGate.forward)
    lineno = first + next(i for i, line in enumerate(lines) if "if y.sum() > 0:" in line)
    assert "torch.fx could not trace all of DeepControlFlow (train mode)" in text
    assert "module 'block.inner.gate' (TraceError: symbolically traced variables" in text
    assert f"test_fallback.py:{lineno}" in text
    assert "module 'head'" in text
    assert "auto_leaf=False" in text
    assert record[0].category is UserWarning
    # one warning per traced mode
    assert [str(w.message).split("(")[1][:10] for w in record] == ["train mode", "eval mode)"]


def test_each_retry_costs_one_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_traces(monkeypatch)
    with pytest.warns(UserWarning):
        traced = fxtap.trace(DeepControlFlow(), training=False, auto_leaf=True)
    assert traced.leaves == ("block.inner.gate", "head")
    # two failures, two retries: three traces, not a search over the 9 modules
    assert calls[0] == 3


def test_plain_functions_are_autowrapped() -> None:
    torch.manual_seed(0)
    model = Helpers()
    ex = build(
        model, ["a", "scale_by_width", "repeat_by_length", "b"], r"kept 2 part", keep_traces=True
    )
    traced = ex.full["train"]
    assert traced.wrapped == (f"{__name__}.scale_by_width", f"{__name__}.repeat_by_length")
    assert traced.leaves == ()
    assert ex.opaque == ()  # only modules are opaque leaves; the functions are single nodes
    check_against_reference(
        ex, model, [torch.randn(3, 4)], autowrap_functions=[scale_by_width, repeat_by_length]
    )


def test_warning_lists_functions() -> None:
    with pytest.warns(UserWarning, match=rf"function {re.escape(__name__)}\.scale_by_width \("):
        fxtap.trace(Helpers(), training=False, auto_leaf=True)


def test_node_table_marks_opaque_leaves() -> None:
    with pytest.warns(UserWarning):
        traced = fxtap.trace(DeepControlFlow(), training=False, auto_leaf=True)
    rows = {row.name: row for row in node_table(DeepControlFlow(), traced=traced)}
    assert rows["head"].opaque and rows["block.inner.gate"].opaque
    assert not rows["stem"].opaque and not rows["out"].opaque


def test_nodes_inside_an_opaque_leaf_cannot_be_requested() -> None:
    with pytest.warns(UserWarning), pytest.raises(NodeNotFoundError, match=r"inside leaf module"):
        create_feature_extractor(DeepControlFlow(), ["block.inner.gate.proj"])


def test_get_graph_node_names_falls_back_too() -> None:
    with pytest.warns(UserWarning, match="kept 2 part"):
        train, eval_ = fxtap.get_graph_node_names(DeepControlFlow())
    assert "head" in train
    assert "head" in eval_ and "block.inner.gate" in eval_
    assert not any(name.startswith("head.") for name in eval_)


# --- turning it off -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [DeepControlFlow, Helpers, ListRoot])
def test_auto_leaf_off_gives_the_trace_error(model: type[nn.Module]) -> None:
    with pytest.raises(TraceError) as info:
        create_feature_extractor(model(), [":output"], auto_leaf=False)
    assert "Fix:" in str(info.value)
    with pytest.raises(TraceError):
        fxtap.get_graph_node_names(model(), auto_leaf=False)


def test_trace_keeps_failing_by_default() -> None:
    # the pipeline stage itself stays strict; only the user-facing functions fall back
    with pytest.raises(TraceError, match=r"module 'block.inner.gate' \(SignGate\)"):
        fxtap.trace(DeepControlFlow(), training=False)


# --- silent mis-traces ----------------------------------------------------------------------------


def test_silent_mistraces_exist_without_example_inputs() -> None:
    torch.manual_seed(0)
    model = SilentMistraces().eval()
    x = torch.randn(2, 4)
    ex = create_feature_extractor(model, [":output"])
    ex.eval()
    with torch.no_grad():
        assert not torch.allclose(ex(x)[":output"], model(x))


def test_example_inputs_find_and_fix_silent_mistraces() -> None:
    torch.manual_seed(0)
    model = SilentMistraces()
    x = torch.randn(2, 4)
    ex = build(
        model,
        ["stage.shortcut", "stage.fc", "noise", ":output"],
        r"module 'stage\.shortcut' \(traced value differs from eager execution: max abs diff",
        example_inputs=(x,),
    )
    assert ex.opaque == ("stage.shortcut", "noise")
    check_against_reference(ex, model, [x], leaf_modules=ex.opaque)
    with torch.no_grad():
        torch.manual_seed(1)
        got = ex.eval()(x)[":output"]
        torch.manual_seed(1)
        assert bitwise_equal(got, model.eval()(x))


def test_mistrace_in_parent_code_makes_the_parent_a_leaf() -> None:
    model = WrapsParent()
    with pytest.warns(UserWarning, match=r"module 'parent' \(traced value differs .* own code"):
        traced = fxtap.trace(model, training=False, auto_leaf=True, example_inputs=torch.ones(1, 4))
    assert traced.leaves == ("parent",)


def test_mistrace_without_auto_leaf_raises() -> None:
    with pytest.raises(MistraceError, match=r"module 'stage\.shortcut'.*leaf_modules"):
        create_feature_extractor(
            SilentMistraces(), ["out"], auto_leaf=False, example_inputs=torch.randn(2, 4)
        )


def test_mistrace_of_the_root_raises() -> None:
    with pytest.raises(MistraceError, match=r"the root RootMistrace.*is_fx_tracing") as info:
        fxtap.trace(RootMistrace(), training=False, auto_leaf=True, example_inputs=torch.ones(1, 4))
    assert info.value.module_path == ""
    assert isinstance(info.value, TraceError)


def test_eager_check_leaves_model_state_alone() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.3)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 4)
    rng = torch.get_rng_state()
    # both runs start from the same RNG state, so a faithful graph's dropout masks agree
    traced = fxtap.trace(model, training=True, auto_leaf=True, example_inputs=x)
    assert traced.leaves == ()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert all(m.training for m in model.modules())


def test_bad_example_inputs_say_so() -> None:
    with pytest.raises(fxtap.InputShapeError, match=r"example inputs do not fit Sequential"):
        fxtap.trace(nn.Sequential(nn.Linear(4, 4)), training=False, example_inputs=torch.ones(5))


def test_final_error_explains_the_root_failure() -> None:
    with pytest.raises(TraceError) as info:
        fxtap.trace(ListRoot(), training=False, auto_leaf=True)
    text = str(info.value)
    assert info.value.module_path == ""
    assert re.search(r"cannot help: the failure is in the root ListRoot\.forward", text)
    assert "CaptureExtractor" in text and "concrete_args=" in text


# --- honest fallback: private functions, fixes that apply, None outputs ------------------------------


def _private_loop(x: torch.Tensor) -> torch.Tensor:
    for _ in range(int(x.shape[0])):
        x = x + 1
    return x


class CallsPrivate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _private_loop(self.lin(x))


class HoldsPrivate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = CallsPrivate()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.inner(x))


def test_private_functions_make_their_caller_opaque_and_say_so() -> None:
    model = HoldsPrivate().eval()
    # torch.fx never autowraps names starting with '_': the module calling it is kept opaque
    ex = build(model, ["inner", "head"], r"module 'inner'.*never autowraps .*_private_loop")
    assert ex.opaque == ("inner",)
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert bitwise_equal(ex(x)["head"], model(x))
    with pytest.raises(TraceError) as info:
        fxtap.trace(model, training=False)
    text = str(info.value)
    assert "autowrap_functions=[" in text and "never autowraps names starting with '_'" in text
    # the fix it names works: the function is one node and the module stays traced
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wrapped = create_feature_extractor(
            model, ["inner.lin", "head"], tracer_kwargs={"autowrap_functions": [_private_loop]}
        )
    assert wrapped.opaque == ()
    with torch.no_grad():
        assert bitwise_equal(wrapped(x)["head"], model(x))


class PrivateAtRoot(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(_private_loop(self.lin(x)))


def test_a_private_function_in_the_root_forward_is_one_node() -> None:
    # no module can take in the root's own call: fxtap records the function itself
    model = PrivateAtRoot().eval()
    ex = build(model, ["lin", "head"], r"function (tests\.)?test_fallback\._private_loop")
    assert isinstance(ex, fxtap.FeatureExtractor) and ex.opaque == ()
    calls = [n.target for n in ex.graph_for("eval").nodes if n.op == "call_function"]
    assert calls == [_private_loop]
    assert not hasattr(_private_loop, "__wrapped__"), "the patch outlived the trace"
    with torch.no_grad():
        for x in (torch.randn(3, 4), torch.randn(5, 4)):  # loops x.shape[0] times, at run time
            assert bitwise_equal(ex(x)["head"], model(x))
            assert bitwise_equal(pickle.loads(pickle.dumps(ex))(x)["head"], model(x))


def test_node_path_tracer_records_private_autowrap_functions() -> None:
    tracer = fxtap.NodePathTracer(autowrap_functions=[_private_loop])
    graph = tracer.trace(HoldsPrivate())
    assert "inner._private_loop" in tracer.node_to_qualname.values()
    assert [n.target for n in graph.nodes if n.op == "call_function"] == [_private_loop]
    assert not hasattr(_private_loop, "__wrapped__")
    with pytest.raises(TypeError):
        fxtap.NodePathTracer().trace(HoldsPrivate())  # without it, torch.fx traces into it


class Decorated(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("co_varnames is too small")


def test_trace_error_suggests_only_fixes_that_apply() -> None:
    with pytest.raises(TraceError) as info:
        fxtap.trace(Decorated(), training=False)
    assert "concrete_args" not in str(info.value)
    assert "leaf_modules=" in str(info.value)
    with pytest.raises(TraceError, match="concrete_args="):
        fxtap.trace(ListRoot(), training=False)


class NoneInDict(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> dict[str, Any]:
        return {"out": self.lin(x), "extra": extra}


def test_none_in_an_eager_output_is_not_a_mistrace() -> None:
    model = NoneInDict().eval()
    ex = create_feature_extractor(model, ["lin"], example_inputs=(torch.randn(2, 4),))
    assert ex.opaque == ()
    with torch.no_grad():
        assert bitwise_equal(ex(torch.ones(2, 4))["lin"], model.lin(torch.ones(2, 4)))
