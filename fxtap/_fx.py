"""Shared torch.fx node helpers: meta keys, target text, scope, owned parameters, aliasing, clones.

Every stage that asks one of these questions about a node imports the answer from here, so the
pruner, the node table, the renderer and the cost report never disagree.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Mapping
from typing import Any

import torch
from torch import fx, nn

from fxtap import _compat

__all__ = [
    "BOUNDARY",
    "BUFFER_WRITE_KEY",
    "CUT_KEY",
    "EDIT_KEY",
    "INPLACE_OPERATORS",
    "NAME_KEY",
    "SCOPE_KEY",
    "SOURCE_KEY",
    "STACK_KEY",
    "VIEW_FUNCTIONS",
    "VIEW_METHODS",
    "aten_alias_arg",
    "boundary_keys",
    "clone_structure",
    "detach_submodules",
    "get_path",
    "inplace_arg",
    "module_stack",
    "module_type_name",
    "node_name",
    "node_scope",
    "op_label",
    "owned_params",
    "set_training",
    "shares_storage",
    "target_text",
    "union_root",
]

#: ``node.meta`` key of an op that writes a module's buffer (running statistics, counters): the
#: path of the module that owns the buffer. The pruner keeps such a write whenever that module
#: still runs, as a module call on the fx path updates its buffers.
BUFFER_WRITE_KEY = "fxtap_buffer_write"
#: ``node.meta`` key of a node ``fxtap.edit`` inserted: the name of the node whose value it replaces.
EDIT_KEY = "fxtap_edit_of"
#: ``node.meta`` key of a node on a ``split`` boundary: ``"cut"`` (a cut node, in the head) or
#: ``"boundary"`` (a value the head returns for the tail, in both halves).
CUT_KEY = "fxtap_cut"
#: Name of a ``split`` tail's one argument: the dict the head returns.
BOUNDARY = "boundary"
#: ``node.meta`` key where torch.export records the module calls a node ran in.
STACK_KEY = "nn_module_stack"
#: ``node.meta`` key holding fxtap's dotted-path name of a node.
NAME_KEY = "fxtap_name"
#: ``node.meta`` key holding ``(module_path, module_type)`` of the scope that created a node.
SCOPE_KEY = "fxtap_scope"
#: ``node.meta`` key holding the ``file:line`` of the user code that created a node.
SOURCE_KEY = "fxtap_source"

#: Tensor methods whose result may share storage with the tensor they are called on.
VIEW_METHODS = frozenset({
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "transpose", "permute",
    "squeeze", "unsqueeze", "expand", "expand_as", "narrow", "select", "chunk", "split",
    "unbind", "t", "contiguous", "as_strided", "movedim", "swapaxes", "unfold", "diagonal",
    "detach", "__getitem__", "type_as", "to", "float", "real", "imag", "mT", "T",
})  # fmt: skip
#: Functions whose result may share storage with their first argument.
VIEW_FUNCTIONS = frozenset({operator.getitem, builtins.getattr} | {
    getattr(torch, n)
    for n in (
        "flatten", "reshape", "transpose", "permute", "squeeze", "unsqueeze", "narrow",
        "select", "chunk", "split", "unbind", "t", "movedim", "swapaxes", "diagonal",
        "detach", "as_strided", "unflatten", "tensor_split", "hsplit", "vsplit",
    )
    if hasattr(torch, n)
})  # fmt: skip
#: Python operators that write into their first argument.
INPLACE_OPERATORS = frozenset({
    getattr(operator, n)
    for n in ("iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "iand", "ior",
              "ixor", "ilshift", "irshift", "imatmul", "setitem")
})  # fmt: skip


def node_name(node: fx.Node) -> str:
    """fxtap's dotted name of ``node``, else torch.fx's own name."""
    return str(node.meta.get(NAME_KEY, node.name))


def node_scope(node: fx.Node) -> str:
    """The module path a node belongs to: its target for a module call, else its scope."""
    if node.op == "call_module":
        return str(node.target)
    return str(node.meta.get(SCOPE_KEY, ("", None))[0])


def module_stack(node: fx.Node) -> list[str]:
    """The module paths of every call an exported node ran in, outermost first (``""`` the root)."""
    stack = node.meta.get(STACK_KEY) or {}
    return [str(v[0]) for v in dict(stack).values() if isinstance(v, tuple) and v]


def module_type_name(gm: nn.Module, node: fx.Node) -> str:
    """Class name of the called module, or of the module whose code created ``node``."""
    if node.op == "call_module":
        return type(gm.get_submodule(str(node.target))).__name__
    scope_type = node.meta.get(SCOPE_KEY, ("", None))[1]
    return scope_type.__name__ if isinstance(scope_type, type) else ""


def target_text(node: fx.Node) -> str:
    """A node's target as users write it: ``torch.flatten``, ``add``, ``layer1.0.conv1``.

    ATen ops of export-path graphs read as torch writes them, without ``.default``:
    ``aten.linear``, ``aten.add.Tensor``.
    """
    target = node.target
    if isinstance(target, str):
        return target
    if _compat.is_op_overload(target) or _compat.is_op_packet(target):
        return str(target).removesuffix(".default")
    module = str(getattr(target, "__module__", None) or "")
    qualname = str(
        getattr(target, "__qualname__", None) or getattr(target, "__name__", repr(target))
    )
    if qualname.startswith("_VariableFunctionsClass."):
        # NOTE: torch's C functions report a private class; users know them as torch.NAME.
        qualname = qualname.split(".", 1)[1]
        module = module or "torch"
    if module in ("", "_operator", "builtins"):
        return qualname
    return f"{module}.{qualname}"


def op_label(node: fx.Node) -> str | None:
    """The short label of an ATen op, without its overload: ``aten.add``; else ``None``.

    >>> g = fx.Graph()
    >>> op_label(g.call_function(torch.ops.aten.add.Tensor, (1, 2)))
    'aten.add'
    """
    target = node.target
    if _compat.is_op_overload(target):
        return "{}.{}".format(*_compat.op_parts(target)[:2])
    if _compat.is_op_packet(target):
        return str(target)
    return None


def owned_params(gm: nn.Module, node: fx.Node) -> int:
    """Elements of the parameters a node uses directly (a module call or a ``get_attr``)."""
    if node.op == "call_module":
        return sum(p.numel() for p in gm.get_submodule(str(node.target)).parameters())
    if node.op == "get_attr":
        try:
            return gm.get_parameter(str(node.target)).numel()
        except AttributeError:
            return 0
    return 0


def inplace_arg(node: fx.Node, owner: nn.Module | None) -> fx.Node | None:
    """The node an in-place op writes into, or ``None`` when ``node`` is not in-place.

    In-place means a method or function named ``NAME_``, an in-place operator, ``inplace=True``,
    or a module whose ``inplace`` attribute is ``True``.
    """
    if not node.args or not isinstance(node.args[0], fx.Node):
        return None
    first = node.args[0]
    if node.op == "call_method":
        name = str(node.target)
        if name.endswith("_") and not name.endswith("__"):
            return first
    elif node.op == "call_function":
        if _compat.is_op_overload(node.target):
            return _aten_written_arg(node)
        if node.target in INPLACE_OPERATORS or node.kwargs.get("inplace") is True:
            return first
        name = getattr(node.target, "__name__", "")
        if name.endswith("_") and not name.endswith("__") and not name.startswith("_"):
            return first
    elif node.op == "call_module" and owner is not None:
        module = owner.get_submodule(str(node.target))
        if getattr(module, "inplace", False) is True:
            return first
    return None


def shares_storage(node: fx.Node, owner: nn.Module | None) -> fx.Node | None:
    """The node whose memory ``node``'s result may reuse: a view's base or an in-place target."""
    written = inplace_arg(node, owner)
    if written is not None:
        return written
    first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    if first is None:
        return None
    if (node.op == "call_method" and node.target in VIEW_METHODS) or (
        node.op == "call_function" and node.target in VIEW_FUNCTIONS
    ):
        return first
    return aten_alias_arg(node)


def aten_alias_arg(node: fx.Node) -> fx.Node | None:
    """The input an ATen op's result may share memory with: a view's base, dropout's input.

    Read from the op's schema (``Tensor(a) self -> Tensor(a)``), as torch.export records ops;
    ``aten.dropout`` returns its input itself in eval mode although its schema does not say so.
    """
    target = node.target
    if node.op != "call_function" or not _compat.is_op_overload(target):
        return None
    first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    if first is None:
        return None
    if target.overloadpacket in _ATEN_PASS_THROUGH:
        return first
    returns = _compat.op_schema(target).returns
    if returns and returns[0].alias_info is not None:
        return first
    return None


def _aten_written_arg(node: fx.Node) -> fx.Node | None:
    """The node argument an ATen op writes into (``add_``, ``copy_``, ``out=``), if any."""
    schema = _compat.op_schema(node.target)  # type: ignore[arg-type]
    if not schema.is_mutable:
        return None
    for i, arg in enumerate(schema.arguments):
        if arg.alias_info is None or not arg.alias_info.is_write:
            continue
        value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
        if isinstance(value, fx.Node):
            return value
    return None


_ATEN_PASS_THROUGH = {
    getattr(torch.ops.aten, n)
    for n in ("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout")
    if hasattr(torch.ops.aten, n)
}


def boundary_keys(graph: fx.Graph) -> tuple[str, ...] | None:
    """The keys a ``split`` tail's graph reads from its one argument, the boundary dict.

    ``None`` unless the graph's only input is ``boundary`` and it only reads items of it by
    name: what ``fxtap.split`` builds, and what a loaded tail still is.
    """
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1 or inputs[0].target != BOUNDARY:
        return None
    keys = []
    for user in inputs[0].users:
        if user.target is not operator.getitem or not isinstance(user.args[1], str):
            return None
        keys.append(user.args[1])
    return tuple(keys)


def get_path(module: nn.Module, target: str) -> Any:
    """The attribute of ``module`` at a dotted ``target`` that fxtap's own graph named."""
    for part in target.split("."):
        module = getattr(module, part)
    return module


def clone_structure(module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
    """A copy of the module tree with its own module objects, sharing parameters and buffers.

    Hook dictionaries are copied so that hooks added to the clone never reach the original.
    """
    if id(module) in memo:
        return memo[id(module)]
    # NOTE: not copy.copy: a parametrized module (weight_norm, spectral_norm, orthogonal)
    # refuses to be copied or pickled, but its state is plain attributes like any module's
    clone = object.__new__(type(module))
    clone.__dict__.update(module.__dict__)
    memo[id(module)] = clone
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    clone._modules = {
        k: (clone_structure(v, memo) if v is not None else None) for k, v in module._modules.items()
    }
    for attr, value in list(vars(module).items()):
        if "hooks" in attr and isinstance(value, dict):
            setattr(clone, attr, type(value)(value))
    return clone


def union_root(pruned: Mapping[str, fx.GraphModule]) -> nn.Module:
    """A root holding every attribute either pruned graph refers to.

    Tensor constants are stored per trace; a name that means different objects in the two
    modes is renamed in the later graph.
    """
    root = nn.Module()
    for mode, gm in pruned.items():
        for node in gm.graph.nodes:
            if node.op not in ("call_module", "get_attr"):
                continue
            target = str(node.target)
            value = get_path(gm, target)
            try:
                existing = get_path(root, target)
            except AttributeError:
                _compat.copy_attr(gm, root, target)
                continue
            if existing is not value:
                renamed = f"{target.replace('.', '_')}_{mode}"
                if isinstance(value, nn.Module):
                    root.add_module(renamed, value)
                else:
                    root.register_buffer(renamed, value, persistent=False)
                node.target = renamed
    return root


def detach_submodules(gm: fx.GraphModule) -> None:
    """Give the extractor its own module objects (sharing parameters and buffers).

    Without this, ``extractor.eval()`` would flip the ``training`` flag of the user's
    submodules, which the extractor's graph modules otherwise share.
    """
    memo: dict[int, nn.Module] = {}
    for name, child in list(gm.named_children()):
        setattr(gm, name, clone_structure(child, memo))


def set_training(root: nn.Module, mode: bool) -> None:
    """Set ``training`` on every module under ``root``, as ``nn.Module.train`` does, faster.

    ``nn.Module.train`` recurses through ``children()`` and ``__setattr__``, about 3 µs per
    module; writing the flag straight into each ``__dict__`` costs a tenth of that, which keeps
    a mode switch of a 700-module DenseNet under a millisecond. A module whose class overrides
    ``train`` gets its own method called, and handles its children itself.
    """
    stack = [root]
    while stack:
        module = stack.pop()
        if module is not root and type(module).train is not _MODULE_TRAIN:
            module.train(mode)
            continue
        module.__dict__["training"] = mode
        stack.extend(child for child in module._modules.values() if child is not None)


_MODULE_TRAIN = nn.Module.train
