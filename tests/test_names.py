"""Tests of fxtap.names: torchvision's node-name API, matching modes, and the node table."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torchvision.models import feature_extraction
from torchvision.models.vision_transformer import VisionTransformer

from fxtap import InputShapeError, InvalidArgumentError, get_graph_node_names, node_table, trace
from fxtap.names import diff_modes
from support.models import (
    EXPECTED_NAMES,
    EXPECTED_TRAIN_NAMES,
    TORCHVISION_NAMES,
    TRACER_KWARGS,
    Block,
    CalledTwice,
    MixedModes,
    Nested,
    SuffixedNames,
    TrainOnlyBranch,
)


class EvalOnlyBranch(nn.Module):
    """Doubles its input in eval mode only, before a node present in both modes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            x = x * 2
        return torch.relu(self.fc(x))


def tiny_vit() -> VisionTransformer:
    """torchvision's ViT with its real encoder blocks (``ln_1``, ``ln_2``), two layers, tiny."""
    return VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16
    )


# --- get_graph_node_names ----------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(EXPECTED_NAMES), ids=lambda c: c.__name__)
def test_names_in_both_modes(cls: type[nn.Module]) -> None:
    train, eval_ = get_graph_node_names(
        cls(), tracer_kwargs=TRACER_KWARGS.get(cls), suppress_diff_warning=True
    )
    assert eval_ == EXPECTED_NAMES[cls]
    assert train == EXPECTED_TRAIN_NAMES.get(cls, EXPECTED_NAMES[cls])


@pytest.mark.parametrize("cls", list(EXPECTED_NAMES), ids=lambda c: c.__name__)
def test_same_names_as_torchvision_unless_listed(cls: type[nn.Module]) -> None:
    kwargs = TRACER_KWARGS.get(cls)
    ours = get_graph_node_names(cls(), tracer_kwargs=kwargs, suppress_diff_warning=True)
    theirs = feature_extraction.get_graph_node_names(
        cls(), tracer_kwargs=copy.deepcopy(kwargs), suppress_diff_warning=True
    )
    if cls in TORCHVISION_NAMES:
        assert theirs[1] == TORCHVISION_NAMES[cls]
        assert ours[1] != theirs[1]
    else:
        assert ours == theirs


def test_suffixed_names_differ_from_torchvision_only_in_the_suffix() -> None:
    ours = get_graph_node_names(SuffixedNames())[1]
    theirs = feature_extraction.get_graph_node_names(SuffixedNames())[1]
    paths = {name for name, _ in SuffixedNames().named_modules()}
    pairs = [(a, b) for a, b in zip(ours, theirs) if a != b]
    assert pairs == [
        ("conv_1", "conv"),
        ("act_2", "act"),
        ("conv_2", "conv_1"),
        ("act_2_1", "act_1"),
    ]
    # every name fxtap gives a leaf call is the module's real path (plus a call count)
    assert {"conv_1", "conv_2", "act_2"} <= paths
    assert "conv" not in paths
    assert "act" not in paths


def test_warns_when_modes_differ_and_names_train_only_nodes() -> None:
    with pytest.warns(UserWarning) as record:
        get_graph_node_names(TrainOnlyBranch())
    assert len(record) == 1
    message = str(record[0].message)
    assert "TrainOnlyBranch" in message
    assert "2 node(s) only in train mode: 'randn_like', 'add'" in message
    assert "only in eval mode" not in message
    assert "suppress_diff_warning=True" in message
    # stacklevel=2: the warning points at the caller, not at fxtap
    assert record[0].filename == __file__


def test_warning_names_eval_only_nodes_without_renumbering() -> None:
    with pytest.warns(UserWarning, match=r"1 node\(s\) only in eval mode: 'mul'") as record:
        get_graph_node_names(EvalOnlyBranch())
    assert "only in train mode" not in str(record[0].message)


def test_no_warning_when_modes_agree_or_suppressed() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_graph_node_names(Nested())
        get_graph_node_names(TrainOnlyBranch(), suppress_diff_warning=True)


def test_get_graph_node_names_leaves_model_and_kwargs_alone() -> None:
    model = MixedModes()
    flags = {name: m.training for name, m in model.named_modules()}
    attrs = set(vars(model))
    kwargs = {"leaf_modules": [nn.Linear]}
    get_graph_node_names(model, tracer_kwargs=kwargs)
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert set(vars(model)) == attrs
    assert kwargs == {"leaf_modules": [nn.Linear]}


def test_get_graph_node_names_passes_options_through() -> None:
    train, eval_ = get_graph_node_names(Nested(), tracer_kwargs={"leaf_modules": ["stage"]})
    assert train == eval_ == ["x", "stem", "stage", "mean", "head"]


def test_diff_modes_matches_by_scope_op_and_occurrence() -> None:
    model = EvalOnlyBranch()
    train = trace(model, training=True)
    evaluated = trace(model, training=False)
    # torch.fx's own names shift, fxtap's matching does not report the shifted node
    diff = diff_modes(train, evaluated)
    assert diff.train_only == ()
    assert diff.eval_only == ("mul",)
    assert bool(diff)
    assert not diff_modes(trace(Nested(), training=True), trace(Nested(), training=False))


# --- the ViT divergence ------------------------------------------------------------------------


def test_vit_layer_norms_keep_their_real_names() -> None:
    model = tiny_vit()
    ours = get_graph_node_names(model)[1]
    theirs = feature_extraction.get_graph_node_names(model)[1]
    prefix = "encoder.layers.encoder_layer_0."
    assert [n for n in ours if n.startswith(prefix + "ln")] == [prefix + "ln_1", prefix + "ln_2"]
    assert [n for n in theirs if n.startswith(prefix + "ln")] == [prefix + "ln", prefix + "ln_1"]


def test_torchvision_ln_1_is_the_output_of_ln_2() -> None:
    """The fact docs/node-names.md states: torchvision's ``ln_1`` node is module ``ln_2``."""
    torch.manual_seed(0)
    model = tiny_vit().eval()
    layer = model.encoder.layers.encoder_layer_0
    seen: dict[str, torch.Tensor] = {}
    for name in ("ln_1", "ln_2"):
        getattr(layer, name).register_forward_hook(
            lambda m, args, out, name=name: seen.__setitem__(name, out.detach().clone())
        )
    prefix = "encoder.layers.encoder_layer_0."
    extractor = feature_extraction.create_feature_extractor(
        model, return_nodes=[prefix + "ln", prefix + "ln_1"]
    )
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = extractor(x)
        model(x)
    assert torch.equal(out[prefix + "ln"], seen["ln_1"])
    assert torch.equal(out[prefix + "ln_1"], seen["ln_2"])
    assert not torch.equal(seen["ln_1"], seen["ln_2"])


# --- node_table ---------------------------------------------------------------------------------


def test_node_table_with_example_inputs() -> None:
    rows = node_table(Nested(), example_inputs=(torch.randn(2, 3, 8, 8),))
    assert [r.name for r in rows] == EXPECTED_NAMES[Nested]
    by_name = {r.name: r for r in rows}
    assert by_name["x"].shape == (2, 3, 8, 8)
    assert by_name["stage.blocks.1.add"].shape == (2, 4, 8, 8)
    assert by_name["mean"].shape == (2, 4)
    assert by_name["head"].shape == (2, 2)
    assert {r.dtype for r in rows} == {"float32"}
    stem = by_name["stem"]
    assert (stem.op, stem.target, stem.module_type, stem.num_params) == (
        "call_module",
        "stem",
        "Conv2d",
        3 * 4 + 4,
    )
    add = by_name["stage.blocks.0.add"]
    assert (add.op, add.module_type, add.num_params) == ("call_function", "Block", 0)
    assert by_name["stage.relu"].target == "torch.nn.functional.relu"
    assert by_name["mean"].op == "call_method"
    # sources point at the line of the model's code that made each node
    assert add.source is not None
    assert add.source.rsplit(":", 1)[0].endswith("models.py")
    assert add.source != by_name["stage.relu"].source


def test_node_table_dtypes_follow_the_inputs() -> None:
    model = Nested().double()
    rows = node_table(model, example_inputs=(torch.randn(1, 3, 4, 4, dtype=torch.float64),))
    assert {r.dtype for r in rows} == {"float64"}


def test_node_table_without_inputs_has_no_shapes() -> None:
    rows = node_table(CalledTwice())
    assert [r.name for r in rows] == EXPECTED_NAMES[CalledTwice]
    assert all(r.shape is None and r.dtype is None for r in rows)


def test_node_table_in_train_mode() -> None:
    rows = node_table(TrainOnlyBranch(), training=True)
    assert [r.name for r in rows] == EXPECTED_TRAIN_NAMES[TrainOnlyBranch]


def test_node_table_leaves_buffers_and_flags_alone() -> None:
    model = Nested().train()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    node_table(model, training=True, example_inputs=(torch.randn(2, 3, 8, 8),))
    for key, value in model.state_dict().items():
        assert torch.equal(value, stats[key]), key
    assert all(m.training for m in model.modules())


def test_node_table_accepts_leaf_options() -> None:
    rows = node_table(
        Nested(), example_inputs=torch.randn(1, 3, 4, 4), tracer_kwargs={"leaf_modules": [Block]}
    )
    by_name = {r.name: r for r in rows}
    assert by_name["stage.blocks.0"].module_type == "Block"
    assert by_name["stage.blocks.0"].shape == (1, 4, 4, 4)


def test_node_table_rejects_a_wrong_input_shape() -> None:
    with pytest.raises(InputShapeError) as info:
        node_table(Nested(), example_inputs=(torch.randn(2, 5, 8, 8),))
    text = str(info.value)
    assert "2x5x8x8" in text
    assert "Nested" in text
    assert "stem" in text
    assert isinstance(info.value, ValueError)


def test_input_shape_error_gives_the_op_reason() -> None:
    with pytest.raises(InputShapeError, match=r"to have 3 channels, but got 5 channels"):
        node_table(Nested(), example_inputs=(torch.randn(2, 5, 8, 8),))


def test_node_table_rejects_non_tensor_inputs() -> None:
    with pytest.raises(InvalidArgumentError, match=r"expected a tensor or a tuple of tensors"):
        node_table(Nested(), example_inputs=42)  # type: ignore[arg-type]
