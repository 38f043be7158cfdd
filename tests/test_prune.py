"""Tests of fxtap.prune: request validation, the one query resolver, and assert-aware pruning."""

from __future__ import annotations

import re

import pytest
import torch
from torch import fx, nn

from fxtap import InvalidArgumentError, NodeNotFoundError, create_feature_extractor, trace
from fxtap._query import Request, normalize_return_nodes, resolve
from fxtap.prune import prune
from support.checker import bitwise_equal, capture_reference, check_extractor


class Chain(nn.Module):
    """stem -> two blocks -> head; each block is conv, relu, then a functional add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.blocks = nn.Sequential(*(_Block() for _ in range(2)))
        self.head = nn.Linear(4, 3)
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(x.mean((2, 3)) * self.scale)


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x)) + x


class Checked(nn.Module):
    """Shape asserts: one on the input (live under any cut), one on the head's output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.dim() == 4, "expected NCHW input")
        y = self.conv(x)
        z = self.head(y.mean((2, 3)))
        torch._assert(z.shape[1] == 3, "head gives 3 classes")
        torch._assert_async(z.abs().sum() >= 0)
        return z


class WritesInPlace(nn.Module):
    """An in-place op with no users of its own that mutates a value read afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        flat = y.view(-1)
        y.mul_(3)
        flat[:4].add_(1)  # writes through a view of a view
        return self.head(y)


X = torch.randn(2, 3, 8, 8)


def graph_targets(graph: fx.Graph) -> list[object]:
    return [n.target for n in graph.nodes]


# --- normalize_return_nodes ------------------------------------------------------------------


def test_list_and_dict_requests() -> None:
    assert normalize_return_nodes(["a", "b"], argument="return_nodes") == [
        Request("a", "a"),
        Request("b", "b"),
    ]
    assert normalize_return_nodes({"a": "x"}, argument="return_nodes") == [Request("a", "x")]
    assert normalize_return_nodes("a", argument="return_nodes") == [Request("a", "a")]
    # Integer keys stay integers, as IntermediateLayerGetter keeps them; integer names are
    # their decimal string.
    assert normalize_return_nodes({"a": 0, 1: "b"}, argument="return_nodes") == [
        Request("a", 0),
        Request("1", "b"),
    ]


@pytest.mark.parametrize(
    ("nodes", "match"),
    [
        ({"a": "k", "b": "k"}, "output key 'k' twice"),
        ([], "is empty"),
        ([3.5], "non-string node name 3.5"),
        ({"a": 1.5}, "output keys must be strings"),
        (5, "is a int"),
    ],
)
def test_bad_requests_raise(nodes: object, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match) as info:
        normalize_return_nodes(nodes, argument="return_nodes")
    assert isinstance(info.value, ValueError)  # torchvision-style `except ValueError` still works


# --- resolve ---------------------------------------------------------------------------------


def test_prefix_selects_last_node_in_execution_order() -> None:
    traced = trace(Chain(), training=False)
    got = resolve(
        [Request("blocks", "b"), Request("blocks.0", "b0"), Request("stem", "s")],
        traced,
        model_name="Chain",
    )
    assert {k: traced.names[v] for k, v in got.items()} == {
        "b": "blocks.1.add",
        "b0": "blocks.0.add",
        "s": "stem",
    }


def test_overlapping_queries_resolve_as_if_alone() -> None:
    traced = trace(Chain(), training=False)
    alone = {
        q: traced.names[resolve([Request(q, q)], traced, model_name="Chain")[q]]
        for q in ("blocks", "blocks.1", "blocks.1.add")
    }
    together = resolve([Request(q, q) for q in alone], traced, model_name="Chain")
    assert {k: traced.names[v] for k, v in together.items()} == alone
    assert set(alone.values()) == {"blocks.1.add"}


@pytest.mark.parametrize("query", ["blocks.*", "b.ocks", "blocks.0.(add)", "stem|head", "[s]tem"])
def test_regex_characters_are_literal(query: str) -> None:
    traced = trace(Chain(), training=False)
    with pytest.raises(NodeNotFoundError):
        resolve([Request(query, "k")], traced, model_name="Chain")


def test_prefix_stops_at_dots() -> None:
    # 'block' is a prefix of 'blocks' as text but not as a dotted path.
    traced = trace(Chain(), training=False)
    with pytest.raises(NodeNotFoundError, match="'block' not found"):
        resolve([Request("block", "k")], traced, model_name="Chain")


def test_not_found_names_mode_and_closest() -> None:
    traced = trace(Chain(), training=True)
    with pytest.raises(NodeNotFoundError) as info:
        resolve([Request("blocks.0.rel", "k")], traced, model_name="Chain")
    message = str(info.value)
    assert "'blocks.0.rel' not found in the train graph of Chain" in message
    assert "'blocks.0.relu'" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_query_inside_leaf_says_so() -> None:
    traced = trace(Chain(), training=False, tracer_kwargs={"leaf_modules": [_Block]})
    with pytest.raises(NodeNotFoundError, match=re.escape("inside leaf module 'blocks.0'")):
        resolve([Request("blocks.0.conv", "k")], traced, model_name="Chain")


def test_input_and_output_queries() -> None:
    traced = trace(Chain(), training=False)
    got = resolve(
        [Request("blocks.1:input", "i"), Request(":output", "o"), Request("head:output", "h")],
        traced,
        model_name="Chain",
    )
    assert traced.names[got["i"]] == "blocks.0.add"
    assert traced.names[got["o"]] == "head"
    assert got["h"] is got["o"]
    with pytest.raises(NodeNotFoundError, match=re.escape("closest: 'blocks.1:input'")):
        resolve([Request("blocks.1:inpt", "k")], traced, model_name="Chain")


# --- prune -----------------------------------------------------------------------------------


def test_prune_drops_unused_nodes_and_attributes() -> None:
    model = Chain()
    traced = trace(model, training=False)
    gm = prune(traced, resolve([Request("blocks.0", "f")], traced, model_name="C"), class_name="C")
    gm.graph.lint()
    assert [n.op for n in gm.graph.nodes].count("call_module") == 3  # stem, conv, relu
    assert {name for name, _ in gm.named_parameters()} == {
        "stem.weight",
        "stem.bias",
        "blocks.0.conv.weight",
        "blocks.0.conv.bias",
    }
    assert dict(gm.named_buffers()) == {}
    assert not hasattr(gm, "head")
    reference, _ = capture_reference(model, (X,), training=False)
    assert bitwise_equal(gm(X)["f"], reference["blocks.0.add"])


def test_asserts_on_pruned_code_are_dropped() -> None:
    ex = check_extractor(Checked(), ["conv"], (X,))
    for mode in ("train", "eval"):
        targets = graph_targets(ex.graph_for(mode))
        # The input check reads only the input's metadata: free, kept.
        assert torch._assert in targets
        assert targets.count(torch._assert) == 1
        assert torch._assert_async not in targets
        assert "head" not in targets
    assert not hasattr(ex, "head")


def test_asserts_on_kept_code_stay() -> None:
    ex = check_extractor(Checked(), ["head"], (X,))
    targets = graph_targets(ex.graph)
    assert targets.count(torch._assert) == 2
    assert torch._assert_async in targets
    with pytest.raises(AssertionError, match="expected NCHW input"):
        ex(torch.randn(3, 8, 8))


def test_inplace_write_to_used_value_is_kept() -> None:
    model = WritesInPlace()
    ex = check_extractor(model, ["head"], (X,))
    targets = graph_targets(ex.graph)
    assert "mul_" in targets and "add_" in targets
    with torch.no_grad():
        assert bitwise_equal(ex(X)["head"], model(X))


def test_inplace_write_after_cut_is_dropped_and_value_kept() -> None:
    model = WritesInPlace()
    ex = check_extractor(model, ["conv"], (X,))
    targets = graph_targets(ex.graph)
    assert "mul_" not in targets and "add_" not in targets and "head" not in targets
    # The writes went with the pruned code, and so did the clone that guarded against them.
    assert "clone" not in targets
    with torch.no_grad():
        assert bitwise_equal(ex(X)["conv"], model.conv(X))


def test_view_of_value_written_later_is_protected() -> None:
    # 'view' shares storage with conv's output, which 'mul_' overwrites afterwards.
    ex = check_extractor(WritesInPlace(), {"view": "flat", "head": "out"}, (X,))
    clones = [n for n in ex.graph.nodes if n.target == "clone"]
    assert [n.args[0].target for n in clones] == ["view"]


def test_no_clone_when_no_inplace_follows() -> None:
    ex = create_feature_extractor(Chain(), ["blocks.0", "head"])
    for mode in ("train", "eval"):
        assert "clone" not in graph_targets(ex.graph_for(mode))


@torch.fx.wrap
def _add_into(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x.add_(y)
    return x


class _WrappedWrite(nn.Module):
    """A wrapped function writes into ``a`` in place and its result is dropped (as mvit does)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.lin(x)
        _add_into(a, x)
        return a * 2


def test_wrapped_function_writing_in_place_is_kept() -> None:
    model = _WrappedWrite().eval()
    ex = create_feature_extractor(model, ["lin", "mul"])
    targets = [n.target for n in ex.graph.nodes]
    assert _add_into in targets, ex.code
    x = torch.randn(3, 4)
    with torch.no_grad():
        out = ex(x)
        a = model.lin(x)
        assert torch.equal(out["lin"], a)  # the value at the node, before the write
        assert torch.equal(out["mul"], (a + x) * 2)


def _first_dim(shape: torch.Size, x: torch.Tensor) -> torch.Tensor:
    return x * shape[0]


torch.fx.wrap("_first_dim")


class _ShapesIntoFunctions(nn.Module):
    """A shape check and a wrapped function taking a shape: neither value is a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.dim() == 2, "expected 2-D")
        return _first_dim(x.shape, self.lin(x))


def test_non_tensor_values_are_returned_without_clones() -> None:
    model = _ShapesIntoFunctions().eval()
    ex = create_feature_extractor(model, ["eq", "getattr", "_first_dim"])
    assert not any(n.target == "clone" for n in ex.graph.nodes), ex.code
    x = torch.randn(2, 3)
    with torch.no_grad():
        out = ex(x)
        assert out["eq"] is True
        assert out["getattr"] == torch.Size([2, 3])
        assert torch.equal(out["_first_dim"], model.lin(x) * 2)


class _IdentityThenInplace(nn.Module):
    """An Identity passes its input through; the in-place ReLU after it overwrites the tap."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.drop = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(self.bn(x)))


def test_tap_before_pass_through_module_and_inplace_op_keeps_its_value() -> None:
    model = _IdentityThenInplace().eval()
    ex = create_feature_extractor(model, ["bn", "act"])
    x = torch.randn(5, 4)
    with torch.no_grad():
        out = ex(x)
        expected = model.bn(x)
    assert (expected < 0).any()
    assert torch.equal(out["bn"], expected)
    assert torch.equal(out["act"], expected.relu())


class DeadDraw(nn.Module):
    """A dropout whose value nothing reads, before one that the output reads (pegasus_x's last
    encoder layer drops out global tokens the output leaves, before the decoder's dropouts)."""

    def __init__(self) -> None:
        super().__init__()
        self.side = nn.Linear(6, 6)
        self.side_drop = nn.Dropout(0.5)
        self.main = nn.Linear(6, 6)
        self.drop = nn.Dropout(0.5)
        self.last = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.side_drop(self.side(x))  # drawn, then dropped
        out = self.drop(self.main(x))
        return out, self.last(out)


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_a_dead_draw_before_a_kept_one_is_kept(tracer: str) -> None:
    model = DeadDraw().train()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    options = {"example_inputs": (x,)} if tracer == "export" else {}
    ex = create_feature_extractor(model, ["drop"], tracer=tracer, **options)
    torch.manual_seed(0)
    want, _ = model(x)
    torch.manual_seed(0)
    got = ex(x)["drop"]
    assert bitwise_equal(got, want)  # the same mask: the side dropout still drew first
    graph = ex.graph_for("train")
    kept = [n for n in graph.nodes if n.op != "placeholder" and "side" in n.name]
    assert kept, "the side branch's draw was pruned away"
    assert not any("last" in n.name for n in graph.nodes)  # draws after the last tap may go
