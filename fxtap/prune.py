"""Prune a traced graph down to what the requested nodes need."""

from __future__ import annotations

import builtins
import operator
import types
from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import fx, nn

from fxtap import _compat
from fxtap._fx import (
    BUFFER_WRITE_KEY,
    VIEW_FUNCTIONS,
    VIEW_METHODS,
    aten_alias_arg,
    inplace_arg,
    module_stack,
)
from fxtap.trace import INPUT_CHECKS, NAME_KEY, Traced

__all__ = ["clone_tensors", "prune", "unwrap_output", "written_inputs"]


def _is_check(target: Any) -> bool:
    """torch's asserts and the export path's input shape checks: kept while they read live
    values."""
    return _compat.is_assert(target) or target in INPUT_CHECKS


#: ``node.meta`` key marking a clone that protects a returned value from a later in-place op.
_CLONE_OF = "fxtap_clone_of"
#: ``node.meta`` key marking such a clone that feeds the later uses (the node itself is returned).
_FEEDS = "fxtap_clone_feeds"


def prune(traced: Traced, selected: Mapping[Any, Any], *, class_name: str) -> fx.GraphModule:
    """Copy the traced graph, return ``selected`` as a dict, and drop everything unneeded.

    Removes every node that no longer contributes, including ``torch._assert`` checks that
    would keep otherwise-dead code alive, but keeps in-place ops that mutate a value still
    read. A returned value that a later in-place op overwrites is cloned right after it is
    produced and the clone feeds the later code, so the extractor returns the node itself,
    at its value and on the autograd path (``_protect_from_inplace``). Unused parameters,
    buffers and submodules are not copied into the result.

    Before::

        def forward(self, x):
            conv1 = self.conv1(x);  bn1 = self.bn1(conv1);  relu = self.relu(bn1)  # inplace
            ...
            return fc

    After ``prune(traced, {"bn1": <bn1>})``::

        def forward(self, x):
            conv1 = self.conv1(x);  bn1 = self.bn1(conv1);  clone = bn1.clone()
            relu = self.relu(clone)
            return {'bn1': bn1}
    """
    owner = traced.graph_module
    graph = fx.Graph()
    mapping: dict[fx.Node, fx.Node] = {}
    graph.graph_copy(owner.graph, mapping)
    outputs = {key: _map(value, mapping) for key, value in selected.items()}
    facts = _Facts(graph, owner)
    outputs = dict(sorted(outputs.items(), key=lambda kv: _position(kv[1], facts.order)))
    outputs = _protect_from_inplace(graph, outputs, facts)
    graph.output(outputs)

    # Pass 1, on a throwaway copy: what is live when no assert is kept.
    trial = fx.Graph()
    trial_map: dict[fx.Node, fx.Node] = {}
    trial.output(trial.graph_copy(graph, trial_map))
    back = {v: k for k, v in trial_map.items()}
    trial.eliminate_dead_code(is_impure_node=_Facts(trial, owner).is_impure)
    live = {back[n] for n in trial.nodes if n in back}
    # Pass 2: keep an assert only if it checks live values with computation of its own, not
    # with model code that pruning removed.
    own = {mapping[n] for n in _assert_only(owner.graph)}
    facts = _Facts(graph, owner, live=live, assert_only=own)
    graph.eliminate_dead_code(is_impure_node=facts.is_impure)
    _drop_needless_clones(graph, owner)
    return fx.GraphModule(owner, graph, class_name)


def unwrap_output(graph: fx.Graph, key: str) -> None:
    """Make a graph that ``prune`` built return ``outputs[key]`` itself instead of the dict.

    ``prune`` returns a dict; a pass that keeps a model's own output structure (the tail of a
    cut, an edited model) prunes with one key and unwraps it here.
    """
    output = graph.output_node()
    outputs = cast(dict[str, Any], output.args[0])
    output.args = (outputs[key],)


def written_inputs(graph: fx.Graph, owner: fx.GraphModule, inputs: list[fx.Node]) -> set[fx.Node]:
    """The nodes among ``inputs`` whose storage an in-place op of ``graph`` writes into.

    Aliases count: a write into a view of an input, or into what dropout or ``Identity``
    passed through, writes into the input.
    """
    facts = _Facts(graph, owner)
    roots = {facts.root[written] for written in facts.writes.values()}
    return {node for node in inputs if facts.root[node] in roots}


def _map(value: Any, mapping: Mapping[fx.Node, fx.Node]) -> Any:
    return fx.node.map_arg(value, lambda n: mapping[n])


def _position(value: Any, order: Mapping[fx.Node, int]) -> int:
    found: list[int] = []

    def visit(node: fx.Node) -> fx.Node:
        found.append(order[node])
        return node

    fx.node.map_arg(value, visit)
    return max(found, default=len(order))


class _Facts:
    """Aliasing and in-place facts about one graph, and the DCE predicate built on them."""

    def __init__(
        self,
        graph: fx.Graph,
        owner: fx.GraphModule,
        live: set[fx.Node] | None = None,
        assert_only: set[fx.Node] | None = None,
    ) -> None:
        self.live = live
        self.assert_only = assert_only or set()
        # modules that still run: every module call a live node ran in (leaf modules included)
        self.running: set[str] = set()
        for node in live or ():
            if BUFFER_WRITE_KEY not in node.meta:
                self.running.update(module_stack(node))
        self.order: dict[fx.Node, int] = {}
        self.root: dict[fx.Node, fx.Node] = {}
        self.writes: dict[fx.Node, fx.Node] = {}
        self.readers: dict[fx.Node, list[fx.Node]] = {}
        for i, node in enumerate(graph.nodes):
            self.order[node] = i
            written = _mutated_arg(node, owner)
            if written is not None:
                self.writes[node] = written
            src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
            shares = src is not None and (
                written is not None
                or (node.op == "call_method" and node.target in VIEW_METHODS)
                or (node.op == "call_function" and node.target in VIEW_FUNCTIONS)
                or _passes_through(node, owner)
                or aten_alias_arg(node) is not None
            )
            self.root[node] = self.root[src] if shares and src is not None else node
            for arg in node.all_input_nodes:
                self.readers.setdefault(self.root[arg], []).append(node)

    def is_impure(self, node: fx.Node) -> bool:
        """DCE predicate: placeholders, observed in-place writes, buffer updates of modules that
        run (``BUFFER_WRITE_KEY``, on the second pass), and asserts on live code."""
        if node.op in ("placeholder", "output"):
            return True
        if node.op == "call_function" and _compat.is_vmap_nesting(node.target):
            return True  # cheap, and the batch-dim ops between a pair need both
        if node.op == "call_function" and _is_check(node.target):
            return self.live is not None and _checks_live(node, self.live, self.assert_only)
        owner = node.meta.get(BUFFER_WRITE_KEY)
        if owner is not None and self.live is not None and (not owner or owner in self.running):
            return True  # a buffer update of a module that runs, as its call on the fx path
        written = self.writes.get(node)
        if written is None:
            return False
        # NOTE: DCE walks backwards, so every node after this one is already final: keep the
        # in-place op only if a surviving later node reads the storage it writes.
        here = self.order[node]
        for reader in reversed(self.readers.get(self.root[written], ())):
            if self.order[reader] <= here:
                break
            if not _compat.is_erased(reader):
                return True
        return False


def _mutated_arg(node: fx.Node, owner: fx.GraphModule) -> fx.Node | None:
    """The node an op may write into: a real in-place op, or a wrapped Python function."""
    written = inplace_arg(node, owner)
    if written is None and node.op == "call_function" and node.args:
        first = node.args[0]
        if isinstance(first, fx.Node) and _opaque_function(node.target):
            # NOTE: a wrapped Python function runs as one node and may write into its first
            # argument (torchvision's mvit adds its shortcut in place and drops the result);
            # treat it as a possible write so DCE keeps it while that storage is read later.
            return first
    return written


def clone_tensors(value: Any) -> Any:
    """``value`` with every tensor in it cloned (lists, tuples and dicts rebuilt)."""
    return _compat.tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, value)


def _passes_through(node: fx.Node, owner: fx.GraphModule) -> bool:
    """True for ops that may return their input itself (dropout in eval mode, Identity)."""
    if node.op == "call_function":
        return node.target in _PASS_THROUGH_FUNCTIONS
    if node.op == "call_module":
        return isinstance(owner.get_submodule(str(node.target)), _PASS_THROUGH_MODULES)
    return False


def _pass_through_modules() -> tuple[type, ...]:
    kinds: list[type] = [nn.Identity, nn.Flatten, nn.Unflatten, *_compat.dropout_classes()]
    from torchvision.ops import StochasticDepth

    return (*kinds, StochasticDepth)


def _pass_through_functions() -> set[Any]:
    found: set[Any] = {
        getattr(nn.functional, n)
        for n in ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                  "feature_alpha_dropout")
        if hasattr(nn.functional, n)
    }  # fmt: skip
    found |= {getattr(torch, n) for n in ("dropout", "alpha_dropout") if hasattr(torch, n)}
    from torchvision.ops import stochastic_depth

    return found | {stochastic_depth}


_PASS_THROUGH_MODULES = _pass_through_modules()
_PASS_THROUGH_FUNCTIONS = _pass_through_functions()


def _opaque_function(target: Any) -> bool:
    """A plain Python function recorded as one node (``torch.fx.wrap``, autowrap), not torch's."""
    if not isinstance(target, types.FunctionType):
        return False
    module = getattr(target, "__module__", None) or ""
    return module.split(".")[0] not in _PURE_PACKAGES and not module.startswith("torchvision.ops")


_PURE_PACKAGES = {"torch", "math", "operator", "_operator", "builtins"}
# Nodes whose value is a number, a shape or a tuple: they cannot be cloned, nor written in place.
_SPLIT_NAMES = ("split", "chunk", "unbind", "tensor_split", "hsplit", "vsplit", "dsplit")
_SPLITS = {getattr(torch, n) for n in _SPLIT_NAMES if hasattr(torch, n)} | set(_SPLIT_NAMES)
_NOT_TENSOR_METHODS = {"size", "dim", "numel", "ndimension", "nelement", "stride", "tolist",
                       "item", "__len__"}  # fmt: skip
_NOT_TENSOR_FUNCTIONS = {
    builtins.getattr, builtins.len, builtins.isinstance, operator.eq, operator.ne, operator.lt,
    operator.le, operator.gt, operator.ge, operator.not_, operator.truth,
}  # fmt: skip


def _maybe_tensor(node: fx.Node) -> bool:
    """False for nodes known to hold a non-tensor (shapes, numbers, tuples of tensors)."""
    if node.op not in ("call_method", "call_function"):
        return True
    if node.target in _SPLITS or _is_check(node.target):
        return False
    if node.op == "call_method":
        return node.target not in _NOT_TENSOR_METHODS
    if node.target in _NOT_TENSOR_FUNCTIONS:
        return False
    if node.target is operator.getitem and isinstance(node.args[0], fx.Node):
        # an item of a tensor, or of a split's tuple, is a tensor; of a shape, a number
        source = node.args[0]
        return _maybe_tensor(source) or source.target in _SPLITS
    return True


def _protect_from_inplace(
    graph: fx.Graph, outputs: dict[Any, Any], facts: _Facts
) -> dict[Any, Any]:
    """Keep each returned node that a later in-place op overwrites at the value it had.

    A node that is its own storage (not a view of an earlier value) stays on the autograd
    path: a copy made right after it feeds every later use, so later writes go into the copy
    and ``torch.autograd.grad(score, tap)`` flows through the copy back to the returned node.
    A view of an earlier value may be overwritten through another alias, so a copy of it is
    returned instead (that copy is off the path to the model's output).
    """
    last_write: dict[fx.Node, int] = {}
    for node, written in facts.writes.items():
        last_write[facts.root[written]] = facts.order[node]
    if not last_write:
        return outputs
    clones: dict[fx.Node, fx.Node] = {}

    def protect(node: fx.Node) -> fx.Node:
        if last_write.get(facts.root[node], -1) <= facts.order[node] or not _maybe_tensor(node):
            return node
        if node not in clones:
            with graph.inserting_after(node):
                if node.op == "call_function" and _opaque_function(node.target):
                    # its value may be a tensor, a tuple of them, or anything else
                    clone = graph.call_function(clone_tensors, (node,))
                else:
                    clone = graph.call_method("clone", (node,))
            clone.meta[_CLONE_OF] = node.meta.get(NAME_KEY)
            if facts.root[node] is node:
                node.replace_all_uses_with(clone, delete_user_cb=lambda user: user is not clone)
                clone.meta[_FEEDS] = True
                clones[node] = node
            else:
                clones[node] = clone
        return clones[node]

    return {key: fx.node.map_arg(value, protect) for key, value in outputs.items()}


def _drop_needless_clones(graph: fx.Graph, owner: fx.GraphModule) -> None:
    """Remove the protective clones whose in-place writer was pruned away.

    A clone is inserted before pruning, when the cut is not yet known; if every later write
    into the value went with the pruned code, the value is used as it is.
    """
    facts = _Facts(graph, owner)
    for node in list(graph.nodes):
        if _CLONE_OF not in node.meta:
            continue
        source = node.args[0]
        here = facts.order[node]
        # a feeding clone receives the later writes itself; a returned clone guards its source
        root = node if node.meta.get(_FEEDS) else facts.root[source]
        if not any(
            facts.root[written] is root and facts.order[writer] > here
            for writer, written in facts.writes.items()
        ):
            node.replace_all_uses_with(source)
            graph.erase_node(node)


def _assert_only(graph: fx.Graph) -> set[fx.Node]:
    """Nodes of the full graph computed only to feed asserts (``x.dim()``, ``x == x``, ...)."""
    only: set[fx.Node] = set()
    for node in reversed(graph.nodes):
        if node.op in ("placeholder", "output") or not node.users:
            continue
        if all(
            user in only or (user.op == "call_function" and _is_check(user.target))
            for user in node.users
        ):
            only.add(node)
    return only


def _checks_live(node: fx.Node, live: set[fx.Node], assert_only: set[fx.Node]) -> bool:
    """True when the assert reads live values only, through computation of its own.

    An assert that needs a node of model code outside ``live`` (a shape check on a pruned
    block) would keep that code alive for nothing: it goes with the code it checks.
    """
    stack = list(node.all_input_nodes)
    seen = set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current in live or current.op == "placeholder":
            continue
        if current not in assert_only:
            return False
        stack.extend(current.all_input_nodes)
    return True
