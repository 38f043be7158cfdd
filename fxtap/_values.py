"""What a graph node's value may be, for the pruner's in-place and alias rules.

A node may hold a tensor or a number, a tuple of tensors (a split), its input passed through
(dropout in eval mode, ``Identity``), or be a plain Python function recorded as one node that
may write into its first argument.
"""

from __future__ import annotations

import builtins
import operator
import types
from typing import Any

import torch
from torch import fx, nn

from fxtap import _compat
from fxtap.trace import INPUT_CHECKS

__all__ = ["maybe_tensor", "opaque_function", "passes_through"]


def passes_through(node: fx.Node, owner: fx.GraphModule) -> bool:
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


def opaque_function(target: Any) -> bool:
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


def maybe_tensor(node: fx.Node) -> bool:
    """False for nodes known to hold a non-tensor (shapes, numbers, tuples of tensors)."""
    if node.op not in ("call_method", "call_function"):
        return True
    if node.target in _SPLITS or _compat.is_assert(node.target) or node.target in INPUT_CHECKS:
        return False
    if node.op == "call_method":
        return node.target not in _NOT_TENSOR_METHODS
    if node.target in _NOT_TENSOR_FUNCTIONS:
        return False
    if node.target is operator.getitem and isinstance(node.args[0], fx.Node):
        # an item of a tensor, or of a split's tuple, is a tensor; of a shape, a number
        source = node.args[0]
        return maybe_tensor(source) or source.target in _SPLITS
    return True
