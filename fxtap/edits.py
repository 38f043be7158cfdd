"""Edit modules for ``fxtap.edit``: each maps a node's value to the value its users get instead.

Each is an ``nn.Module`` whose state is plain numbers and tensors, so an edited model saves in
the safe format. Any other ``nn.Module`` or traceable function taking the value works too.

>>> edits = {"layer3": Scale(0.5), "layer2.0.add": Zero(3), "layer1": Input("patch")}
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fxtap.errors import InvalidArgumentError

__all__ = ["EDITS", "Add", "Input", "Project", "Replace", "Scale", "Zero"]


class Zero(nn.Module):
    """Set the value to zero: all of it, or the units ``index`` along ``dim``.

    Args:
        index: ``None`` (the whole value), an int or a sequence of ints along ``dim``.
        dim: the dimension ``index`` counts along: ``1`` for the channels of an image
            feature map (the default), ``-1`` for the features of a transformer.

    >>> Zero(1)(torch.ones(1, 3, 1, 1)).flatten().tolist()
    [1.0, 0.0, 1.0]
    """

    def __init__(self, index: int | Sequence[int] | None = None, *, dim: int = 1) -> None:
        super().__init__()
        if index is None or (isinstance(index, int) and not isinstance(index, bool)):
            self.index: int | list[int] | None = index
        elif isinstance(index, Sequence) and all(
            isinstance(i, int) and not isinstance(i, bool) for i in index
        ):
            self.index = list(index)
        else:
            raise InvalidArgumentError(
                f"Zero(index={index!r:.60}) is not an int, a list of ints or None; pass e.g. "
                "Zero(3) to zero channel 3, or Zero() to zero the whole value"
            )
        _check_dim(dim, "Zero")
        self.dim = dim

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return torch.zeros_like(value)
        units = [self.index] if isinstance(self.index, int) else self.index
        index = torch.tensor(units, dtype=torch.long, device=value.device)
        return value.index_fill(self.dim, index, 0)

    def extra_repr(self) -> str:
        return f"index={self.index!r}, dim={self.dim}"


class Scale(nn.Module):
    """Multiply the value by ``factor`` (a number, or a tensor that broadcasts to it).

    >>> Scale(2.0)(torch.ones(2)).tolist()
    [2.0, 2.0]
    """

    def __init__(self, factor: float | torch.Tensor) -> None:
        super().__init__()
        if isinstance(factor, torch.Tensor):
            self.register_buffer("factor", factor.detach().clone())
        elif isinstance(factor, (int, float)) and not isinstance(factor, bool):
            self.factor = float(factor)
        else:
            raise InvalidArgumentError(
                f"Scale(factor={factor!r:.60}) is a {type(factor).__name__}; pass a number or "
                "a tensor, e.g. Scale(0.5)"
            )

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        return value * self.factor


class Add(nn.Module):
    """Add ``tensor`` to the value (steering: a direction times a strength).

    >>> Add(torch.tensor([1.0, 0.0]))(torch.ones(2)).tolist()
    [2.0, 1.0]
    """

    tensor: torch.Tensor

    def __init__(self, tensor: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("tensor", _tensor(tensor, "Add", "tensor"))

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        return value + self.tensor


class Project(nn.Module):
    """Remove the component of the value along ``direction`` (of size ``value.shape[dim]``).

    Args:
        direction: a 1-d tensor; it need not have unit norm.
        dim: the dimension the direction lives in: ``-1`` (a transformer's features, the
            default) or ``1`` (the channels of an image feature map).

    >>> Project(torch.tensor([1.0, 0.0]))(torch.tensor([3.0, 4.0])).tolist()
    [0.0, 4.0]
    """

    direction: torch.Tensor

    def __init__(self, direction: torch.Tensor, *, dim: int = -1) -> None:
        super().__init__()
        direction = _tensor(direction, "Project", "direction")
        if direction.dim() != 1 or not bool(direction.norm() > 0):
            raise InvalidArgumentError(
                f"Project(direction=...) has shape {tuple(direction.shape)}; pass a non-zero "
                "1-d tensor with one entry per feature, e.g. torch.randn(768)"
            )
        _check_dim(dim, "Project")
        self.register_buffer("direction", direction / direction.norm())
        self.dim = dim

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        moved = value.movedim(self.dim, -1)
        along = (moved @ self.direction).unsqueeze(-1)
        return (moved - along * self.direction).movedim(-1, self.dim)


class Replace(nn.Module):
    """Use ``tensor`` instead of the value (broadcast to its shape, in its dtype).

    >>> Replace(torch.zeros(1))(torch.ones(2)).tolist()
    [0.0, 0.0]
    """

    tensor: torch.Tensor

    def __init__(self, tensor: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("tensor", _tensor(tensor, "Replace", "tensor"))

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        # a copy: an in-place op after the node must not write into the stored tensor
        return self.tensor.to(value.dtype).expand_as(value).clone()


class Input(nn.Module):
    """Make the value an extra keyword argument of the edited module: ``m(x, patch=cached)``.

    Without the argument (``m(x)``) the value is left as it is. The given tensor must have
    the value's shape; it is copied, so in-place ops after the node never write into it, and
    gradients flow back to it.

    Args:
        name: the keyword argument's name, an ASCII Python identifier.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        if not (isinstance(name, str) and _IDENTIFIER.fullmatch(name)) or keyword.iskeyword(name):
            raise InvalidArgumentError(
                f"Input(name={name!r:.60}) is not an ASCII Python identifier; the name becomes "
                "a keyword argument of the edited module, e.g. Input('patch')"
            )
        self.name = name

    def forward(self, value: torch.Tensor, replacement: Any = None) -> torch.Tensor:
        if replacement is None:
            return value
        if not isinstance(replacement, torch.Tensor) or replacement.shape != value.shape:
            got = (
                f"shape {tuple(replacement.shape)}"
                if isinstance(replacement, torch.Tensor)
                else f"a {type(replacement).__name__}"
            )
            raise InvalidArgumentError(
                f"{self.name}= is {got}, and the value it replaces has shape "
                f"{tuple(value.shape)}; pass {self.name}= a tensor of that shape (e.g. the same "
                "node's value from another run), or leave it out to keep the value"
            )
        return replacement.to(value.dtype).clone()

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


#: The edit modules of this library (the safe format's allowlist includes each).
EDITS: tuple[type[nn.Module], ...] = (Zero, Scale, Add, Project, Replace, Input)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _tensor(value: Any, edit: str, argument: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise InvalidArgumentError(
            f"{edit}({argument}={value!r:.60}) is a {type(value).__name__}; pass a tensor, "
            f"e.g. {edit}(torch.zeros(768))"
        )
    return value.detach().clone()


def _check_dim(dim: Any, edit: str) -> None:
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise InvalidArgumentError(
            f"{edit}(dim={dim!r:.60}) is not an int; pass the dimension, e.g. dim=1"
        )
