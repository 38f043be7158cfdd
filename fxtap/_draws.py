"""Which nodes of a graph draw from torch's global random generator (dropout, ``torch.rand``).

Every draw advances the generator, so the values of every later draw depend on how many came
before. The pruner asks this question to keep a draw whose value no tap needs while a later
draw survives: dropping it would shift the random stream, and a later dropout mask would
differ from the one the unmodified model draws from the same seed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn
from torch.nn import functional

from fxtap import _compat

__all__ = ["draws_random"]


def draws_random(node: fx.Node, owner: nn.Module, *, training: bool) -> bool:
    """Whether running ``node`` may draw from the global generator.

    ATen ops say so with the ``nondeterministic_seeded`` tag (``aten.dropout``,
    ``aten.bernoulli_``); torch.fx graphs hold Python functions (``F.dropout``, ``torch.rand``),
    tensor methods (``x.bernoulli_()``) and module calls (``nn.Dropout`` or a leaf module that
    holds one, in a train-mode graph). A dropout of probability 0, or with ``training=False``,
    draws nothing.

    >>> gm = fx.symbolic_trace(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)))
    >>> [draws_random(n, gm, training=True) for n in gm.graph.nodes]
    [False, False, True, False]
    """
    target = node.target
    if node.op == "call_function":
        if _compat.is_op_packet(target):
            target = getattr(target, "default", target)
        if _compat.is_op_overload(target):
            if torch.Tag.nondeterministic_seeded not in target.tags:
                return False
            return target not in _ATEN_DROPOUTS or not _no_op_dropout(node, 2)
        if target in _DROPOUT_FUNCTIONS:
            return not _no_op_dropout(node, _DROPOUT_FUNCTIONS[target])
        return target in _RANDOM_FUNCTIONS
    if node.op == "call_method":
        return target in _RANDOM_METHODS
    if node.op == "call_module" and training:
        module = owner.get_submodule(str(target))
        return any(
            isinstance(m, _DROPOUT_MODULES) and getattr(m, "p", 1) != 0 for m in module.modules()
        )
    return False


def _no_op_dropout(node: fx.Node, train_at: int) -> bool:
    """A dropout whose probability is a literal 0, or whose ``training`` is a literal False
    (``train_at``: the position of ``training``, which defaults to True)."""
    p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
    if len(node.args) > train_at:
        train = node.args[train_at]
    else:
        train = node.kwargs.get("training", node.kwargs.get("train", True))
    return (isinstance(p, (int, float)) and p == 0) or train is False


_ATEN_DROPOUTS = {
    getattr(torch.ops.aten, n).default
    for n in ("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout")
}


def _dropout_functions() -> dict[Any, int]:
    """Python functions of dropout, each with the position of its ``training`` argument
    (``(input, p, training, ...)``; ``torch.dropout`` names it ``train``)."""
    from torchvision.ops import stochastic_depth

    found: dict[Any, int] = {
        getattr(functional, n): 2
        for n in ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                  "feature_alpha_dropout")
    }  # fmt: skip
    found.update({torch.dropout: 2, torch.alpha_dropout: 2, torch.feature_dropout: 2})
    return {**found, stochastic_depth: 3}  # (input, p, mode, training)


_DROPOUT_FUNCTIONS = _dropout_functions()
_RANDOM_FUNCTIONS = {
    getattr(torch, n)
    for n in ("rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like",
              "normal", "poisson", "bernoulli", "multinomial")
} | {functional.gumbel_softmax}  # fmt: skip
_RANDOM_METHODS = frozenset({
    "bernoulli", "bernoulli_", "uniform_", "normal_", "random_", "exponential_", "geometric_",
    "cauchy_", "log_normal_", "multinomial",
})  # fmt: skip


def _dropout_modules() -> tuple[type[nn.Module], ...]:
    from torchvision.ops import StochasticDepth

    return (*_compat.dropout_classes(), StochasticDepth)


_DROPOUT_MODULES = _dropout_modules()
