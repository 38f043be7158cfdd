"""Tests of fxtap.trace: the naming rules, tracer options, and leaving the model as it was."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import fx, nn

from fxtap import InvalidArgumentError, NodePathTracer, TraceError, trace
from fxtap.trace import NAME_KEY, SCOPE_KEY, restore_training, trace_names, tracer_options
from support.models import (
    EXPECTED_NAMES,
    EXPECTED_TRAIN_NAMES,
    FIXTURES,
    TRACER_KWARGS,
    Block,
    CalledTwice,
    ConcreteFlag,
    DataDependent,
    DropoutNet,
    FunctionalNextToModule,
    Gate,
    InplaceReLU,
    MixedModes,
    Nested,
    SuffixedNames,
    TensorConstant,
    TopLevelFunctions,
    TrainOnlyBranch,
    UsesHelper,
    helper_with_loop,
)


def names(model: nn.Module, *, training: bool = False, **kwargs) -> list[str]:
    return list(trace(model, training=training, **kwargs).names.values())


def op_names(model: nn.Module, **kwargs) -> dict[str, str]:
    """fxtap name -> torch.fx op of every named node (eval mode)."""
    traced = trace(model, training=False, **kwargs)
    return {name: node.op for node, name in traced.names.items()}


# --- the naming rules, one fixture each -------------------------------------------------------


@pytest.mark.parametrize("cls", FIXTURES, ids=lambda c: c.__name__)
def test_eval_names_match_fixture(cls: type[nn.Module]) -> None:
    assert names(cls()) == EXPECTED_NAMES[cls]


@pytest.mark.parametrize("cls", FIXTURES, ids=lambda c: c.__name__)
def test_train_names_match_fixture(cls: type[nn.Module]) -> None:
    expected = EXPECTED_TRAIN_NAMES.get(cls, EXPECTED_NAMES[cls])
    assert names(cls(), training=True) == expected


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cls", list(EXPECTED_NAMES), ids=lambda c: c.__name__)
def test_trace_names_are_the_names_of_trace(cls: type[nn.Module], training: bool) -> None:
    kwargs = TRACER_KWARGS.get(cls)
    listed = trace_names(cls(), training=training, tracer_kwargs=kwargs)
    traced = trace(cls(), training=training, tracer_kwargs=kwargs)
    assert list(listed.values()) == list(traced.names.values())
    assert [n.meta[SCOPE_KEY] for n in listed] == [n.meta[SCOPE_KEY] for n in traced.names]
    assert [(n.op, n.target) for n in listed] == [(n.op, n.target) for n in traced.names]


@pytest.mark.parametrize("cls", [DataDependent, UsesHelper], ids=lambda c: c.__name__)
def test_trace_names_falls_back_as_trace_does(cls: type[nn.Module]) -> None:
    with pytest.warns(UserWarning, match=r"kept 1 part\(s\) opaque") as listed_warning:
        listed = trace_names(cls(), training=False, auto_leaf=True)
    with pytest.warns(UserWarning, match=r"kept 1 part\(s\) opaque") as traced_warning:
        traced = trace(cls(), training=False, auto_leaf=True)
    assert list(listed.values()) == list(traced.names.values())
    assert [str(w.message) for w in listed_warning] == [str(w.message) for w in traced_warning]
    assert listed_warning[0].filename == __file__
    with pytest.raises(TraceError, match=cls.__name__):
        trace_names(cls(), training=False)


def test_leaf_call_is_named_by_module_path_and_function_by_scope() -> None:
    ops = op_names(Nested())
    assert ops["stage.blocks.1.conv"] == "call_module"
    assert ops["stage.blocks.1.add"] == "call_function"
    assert ops["stage.relu"] == "call_function"  # F.relu in Stage.forward
    assert ops["mean"] == "call_method"  # x.mean in the root's forward: no scope prefix


def test_repeats_are_counted_per_scope_not_globally() -> None:
    # torch.fx numbers ``add`` globally (add, add_1); each block's add is its scope's first.
    traced = trace(Nested(), training=False)
    fx_names = {name: node.name for node, name in traced.names.items()}
    assert fx_names["stage.blocks.0.add"] == "add"
    assert fx_names["stage.blocks.1.add"] == "add_1"


def test_module_called_twice_gets_suffixed_second_call() -> None:
    traced = trace(CalledTwice(), training=False)
    targets = {name: node.target for node, name in traced.names.items()}
    assert targets["act"] == targets["act_1"] == "act"
    assert [n for n in traced.names.values() if n.startswith("add")] == ["add", "add_1"]


def test_real_names_ending_in_digits_are_kept() -> None:
    traced = trace(SuffixedNames(), training=False)
    paths = {name for name, _ in SuffixedNames().named_modules()}
    for node in traced.names:
        if node.op == "call_module":
            assert node.target in paths
    calls = {name: node.target for node, name in traced.names.items() if node.op == "call_module"}
    assert calls["conv_1"] == "conv_1"
    assert calls["conv_2"] == "conv_2"
    # the second call of ``act_2`` is suffixed after the real name, never renumbered
    assert calls["act_2"] == calls["act_2_1"] == "act_2"
    assert calls["stage_10.1"] == "stage_10.1"


def test_generated_suffix_skips_a_real_module_path() -> None:
    traced = trace(FunctionalNextToModule(), training=False)
    by_name = {name: node for node, name in traced.names.items()}
    assert by_name["relu_1"].op == "call_module"
    assert by_name["relu_1"].target == "relu_1"
    assert by_name["relu"].op == by_name["relu_2"].op == "call_function"


def test_top_level_functions_and_methods_are_named_by_op() -> None:
    ops = op_names(TopLevelFunctions())
    assert ops["flatten"] == ops["cat"] == ops["getattr"] == ops["getitem"] == "call_function"
    assert ops["reshape"] == ops["sum"] == "call_method"


def test_inplace_relu_keeps_one_node_per_call() -> None:
    traced = trace(InplaceReLU(), training=False)
    relus = [(node.op, node.target) for node, name in traced.names.items() if "relu" in name]
    assert relus[:2] == [("call_module", "relu"), ("call_module", "relu")]
    assert relus[2][0] == "call_function"
    assert relus[2][1] is torch.nn.functional.relu_ or relus[2][1] is torch.relu_


def test_dropout_is_a_leaf_in_both_modes() -> None:
    for training in (True, False):
        traced = trace(DropoutNet(), training=training)
        by_name = {name: node for node, name in traced.names.items()}
        assert by_name["drop"].op == "call_module"
        # F.dropout's ``training`` argument is fixed at trace time from self.training
        assert by_name["dropout"].kwargs.get("training", by_name["dropout"].args[-1]) is training


def test_train_only_branch_exists_in_train_graph_only() -> None:
    assert "randn_like" in names(TrainOnlyBranch(), training=True)
    assert "randn_like" not in names(TrainOnlyBranch(), training=False)


@pytest.mark.parametrize("cls", FIXTURES, ids=lambda c: c.__name__)
def test_names_are_unique_and_stable(cls: type[nn.Module]) -> None:
    model = cls()
    for training in (True, False):
        first = names(model, training=training)
        second = names(model, training=training)
        assert first == second
        assert len(set(first)) == len(first)


def test_node_meta_holds_name_and_scope() -> None:
    traced = trace(Nested(), training=False)
    for node, name in traced.names.items():
        assert node.meta[NAME_KEY] == name
    by_name = {name: node for node, name in traced.names.items()}
    assert by_name["stage.blocks.0.add"].meta[SCOPE_KEY] == ("stage.blocks.0", Block)
    assert by_name["mean"].meta[SCOPE_KEY][0] == ""


def test_unnamed_nodes_are_constants_and_output_only() -> None:
    traced = trace(TensorConstant(), training=False)
    unnamed = [node.op for node in traced.graph_module.graph.nodes if node not in traced.names]
    assert sorted(unnamed) == ["get_attr", "output"]


def test_node_path_tracer_alone() -> None:
    tracer = NodePathTracer()
    graph = tracer.trace(CalledTwice())
    assert list(tracer.node_to_qualname.values()) == EXPECTED_NAMES[CalledTwice]
    assert set(tracer.node_to_qualname) <= set(graph.nodes)


def test_graph_module_computes_the_model() -> None:
    model = Nested().eval()
    traced = trace(model, training=False)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(traced.graph_module(x), model(x), rtol=0, atol=0)
    assert traced.mode == "eval"
    assert trace(model, training=True).mode == "train"


# --- tracer options -----------------------------------------------------------------------------

LEAF_SPECS = {
    "type": [Block],
    "glob": ["stage.blocks.*"],
    "predicate": [lambda m, qualname: isinstance(m, Block)],
}


@pytest.mark.parametrize("kind", sorted(LEAF_SPECS))
def test_leaf_modules(kind: str) -> None:
    got = names(Nested(), tracer_kwargs={"leaf_modules": LEAF_SPECS[kind]})
    assert got == ["x", "stem", "stage.blocks.0", "stage.blocks.1", "stage.relu", "mean", "head"]


def test_leaf_glob_matches_whole_qualified_name() -> None:
    got = names(Nested(), tracer_kwargs={"leaf_modules": ["stage"]})
    assert got == ["x", "stem", "stage", "mean", "head"]
    # ``blocks`` alone matches no qualified name (they are ``stage.blocks``): nothing changes
    assert names(Nested(), tracer_kwargs={"leaf_modules": ["blocks"]}) == EXPECTED_NAMES[Nested]


def test_leaf_predicate_receives_module_and_qualname() -> None:
    seen: list[tuple[str, str]] = []

    def spy(m: nn.Module, qualname: str) -> bool:
        seen.append((type(m).__name__, qualname))
        return False

    names(Nested(), tracer_kwargs={"leaf_modules": [spy]})
    assert ("Stage", "stage") in seen
    assert ("Block", "stage.blocks.1") in seen


def test_leaf_module_makes_untraceable_submodule_traceable() -> None:
    assert names(DataDependent(), tracer_kwargs={"leaf_modules": [Gate]}) == ["x", "gate"]
    assert names(DataDependent(), tracer_kwargs={"leaf_modules": ["gate"]}) == ["x", "gate"]


def test_bad_leaf_spec_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match=r"leaf_modules item 3 is a int"):
        trace(Nested(), training=False, tracer_kwargs={"leaf_modules": [3]})


def test_autowrap_functions() -> None:
    with pytest.raises(TraceError):
        trace(UsesHelper(), training=False)
    traced = trace(
        UsesHelper(), training=False, tracer_kwargs={"autowrap_functions": [helper_with_loop]}
    )
    by_name = {name: node for node, name in traced.names.items()}
    assert list(by_name) == EXPECTED_NAMES[UsesHelper]
    assert by_name["helper_with_loop"].target is helper_with_loop


@pytest.mark.parametrize("container", [list, tuple])
def test_lists_and_tuples_are_accepted(container: type) -> None:
    kwargs = {
        "leaf_modules": container([Block]),
        "autowrap_functions": container([helper_with_loop]),
        "autowrap_modules": container([]),
    }
    assert names(Nested(), tracer_kwargs=kwargs)[2:4] == ["stage.blocks.0", "stage.blocks.1"]
    assert names(UsesHelper(), tracer_kwargs=kwargs)[-1] == "helper_with_loop"


@pytest.mark.parametrize("bad", ["stage", Block, None])
def test_non_sequence_option_is_rejected(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match=r"expected a list or tuple"):
        tracer_options({"leaf_modules": bad})


def test_unknown_tracer_option_suggests_the_close_one() -> None:
    with pytest.raises(InvalidArgumentError, match=r"closest: 'leaf_modules'"):
        tracer_options({"leaf_module": [Block]})


def test_tracer_kwargs_are_not_mutated() -> None:
    leaves = [Block]
    kwargs = {"leaf_modules": leaves, "autowrap_functions": [helper_with_loop]}
    before = copy.deepcopy(kwargs)
    trace(Nested(), training=False, tracer_kwargs=kwargs)
    tracer_options(kwargs)
    assert kwargs == before
    assert kwargs["leaf_modules"] is leaves
    assert leaves == [Block]


def test_concrete_args_pick_the_branch() -> None:
    negated = trace(ConcreteFlag(), training=False, concrete_args={"negate": True})
    plain = trace(ConcreteFlag(), training=False, concrete_args={"negate": False})
    negated_names = list(negated.names.values())
    plain_names = list(plain.names.values())
    assert negated_names[-2:] == ["fc", "neg"]
    assert plain_names[-1] == "fc"
    assert "neg" not in plain_names
    x = torch.randn(2, 4)
    model = ConcreteFlag().eval()
    negated = trace(model, training=False, concrete_args={"negate": True})
    torch.testing.assert_close(negated.graph_module(x, True), model(x, negate=True))


def test_concrete_arg_placeholder_is_named_like_torchvision() -> None:
    got = names(ConcreteFlag(), concrete_args={"negate": True})
    assert got[:2] == ["x", "negate"]


def test_concrete_args_with_unknown_key_names_the_arguments() -> None:
    with pytest.raises(InvalidArgumentError, match=r"'negat'.*closest: 'negate'"):
        trace(ConcreteFlag(), training=False, concrete_args={"negat": True})


def test_without_concrete_args_the_branch_is_untraceable() -> None:
    with pytest.raises(TraceError, match=r"concrete_args"):
        trace(ConcreteFlag(), training=False)


# --- leaving the model as it was ----------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("start", ["train", "eval"])
def test_training_flag_is_restored(training: bool, start: str) -> None:
    model = Nested().train(start == "train")
    trace(model, training=training)
    assert all(m.training is (start == "train") for m in model.modules())


def test_mixed_submodule_modes_are_restored() -> None:
    model = MixedModes()
    before = {name: m.training for name, m in model.named_modules()}
    assert not before["head"]
    assert before["body"]
    for training in (True, False):
        trace(model, training=training)
        assert {name: m.training for name, m in model.named_modules()} == before


def test_training_flags_are_restored_after_a_trace_error() -> None:
    model = DataDependent().eval()
    with pytest.raises(TraceError):
        trace(model, training=True)
    assert not any(m.training for m in model.modules())


def test_tensor_constant_stays_off_the_model() -> None:
    model = TensorConstant()
    before = set(vars(model))
    modules_before = dict(model.named_modules())
    # plain torch.fx puts the constant on the model it traces
    reference = copy.deepcopy(model)
    fx.symbolic_trace(reference)
    assert "_tensor_constant0" in vars(reference)
    traced = trace(model, training=False)
    assert set(vars(model)) == before
    assert not hasattr(model, "_tensor_constant0")
    assert dict(model.named_modules()) == modules_before
    # the constant lives on the graph module instead, and the graph still computes the model
    assert hasattr(traced.graph_module, "_tensor_constant0")
    x = torch.randn(2, 3)
    torch.testing.assert_close(traced.graph_module(x), model(x), rtol=0, atol=0)


def test_graph_module_shares_parameters_with_the_model() -> None:
    model = Nested()
    gm = trace(model, training=False).graph_module
    assert gm.get_parameter("stem.weight") is model.stem.weight


def test_restore_training_puts_each_flag_back() -> None:
    model = MixedModes()
    with restore_training(model):
        model.train()
        assert model.head.training
    assert not model.head.training
    assert model.body.training


# --- errors -------------------------------------------------------------------------------------


def test_trace_error_names_module_source_line_and_fixes() -> None:
    with pytest.raises(TraceError) as info:
        trace(DataDependent(), training=False)
    err = info.value
    text = str(err)
    assert err.module_path == "gate"
    assert err.source is not None
    lines, first = inspect.getsourcelines(Gate.forward)
    lineno = first + next(i for i, line in enumerate(lines) if "if x.sum() > 0:" in line)
    assert err.source.endswith(f"models.py:{lineno}")
    assert "module 'gate' (Gate)" in text
    assert "`if x.sum() > 0:`" in text
    assert "leaf_modules': ['gate']" in text
    assert "concrete_args=" in text
    assert "control flow" in err.reason
    # still the exception torch.fx users catch, and a ValueError as torchvision raises
    assert isinstance(err, torch.fx.proxy.TraceError)
    assert isinstance(err, ValueError)


def test_trace_error_in_plain_function_suggests_autowrap() -> None:
    with pytest.raises(TraceError) as info:
        trace(UsesHelper(), training=False)
    err = info.value
    assert err.module_path == ""
    assert err.function == "support.models.helper_with_loop"
    assert "autowrap_functions=[support.models.helper_with_loop]" in str(err)
    assert "for _ in range(int(x.shape[0])):" in str(err)


def test_non_module_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match=r"expected a torch.nn.Module"):
        trace(lambda x: x, training=False)  # type: ignore[arg-type]
