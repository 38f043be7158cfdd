"""Tiny fixture models for the tests, each with its expected node names written out.

Names are fxtap's dotted-path names in eval mode (``EXPECTED_NAMES``); models whose train-mode
graph differs also appear in ``EXPECTED_TRAIN_NAMES``. Models that fxtap names differently from
torchvision are listed in ``TORCHVISION_NAMES`` with torchvision's eval names.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EXPECTED_NAMES",
    "EXPECTED_TRAIN_NAMES",
    "FIXTURES",
    "TORCHVISION_NAMES",
    "TRACER_KWARGS",
    "CalledTwice",
    "ConcreteFlag",
    "DataDependent",
    "DropoutNet",
    "FunctionalNextToModule",
    "InplaceReLU",
    "ListRoot",
    "MixedModes",
    "Nested",
    "OptionalState",
    "Parametrized",
    "SuffixedNames",
    "TensorConstant",
    "TinyUNet",
    "TopLevelFunctions",
    "TrainOnlyBranch",
    "UsesHelper",
    "helper_with_loop",
]


class Block(nn.Module):
    """conv, batch norm and relu, then a functional add of the input (a residual)."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x))) + x


class Stage(nn.Module):
    """Two ``Block``s in a Sequential, then a functional relu in the stage's own scope."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.blocks = nn.Sequential(Block(channels), Block(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.blocks(x))


class Nested(nn.Module):
    """Three levels of scope: root -> ``Stage`` -> ``Sequential`` -> ``Block``.

    Each functional op is named by the path of the module whose forward ran it, and a leaf
    call by its own path; ``add`` appears once per block, never renumbered across scopes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.stage = Stage(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage(self.stem(x))
        return self.head(x.mean((2, 3)))


class CalledTwice(nn.Module):
    """One leaf module called twice and a functional op repeated: ``act``, ``act_1``, ``add_1``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.fc(x))
        y = y + x
        y = self.act(y)
        return y + x


class TopLevelFunctions(nn.Module):
    """Functions of the ``torch`` namespace, a method and ``getattr`` in the root scope."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        flat = torch.flatten(y, 1)
        both = torch.cat([flat, flat], dim=1)
        n = both.shape[0]
        return both.reshape(n, -1).sum(dim=1)


class SuffixedNames(nn.Module):
    """Submodules whose real names end in ``_<digits>`` keep them exactly.

    ``act_2`` is called twice, so its second call is ``act_2_1``. torchvision strips a trailing
    ``_<digits>`` from every name and renumbers per base name: it calls ``conv_1`` ``conv``,
    ``conv_2`` ``conv_1`` and the two ``act_2`` calls ``act`` and ``act_1``. ``stage_10``'s
    children end in a digit, not in ``_<digits>``, so both libraries name them alike.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv_1 = nn.Conv2d(3, 4, 1)
        self.conv_2 = nn.Conv2d(4, 4, 1)
        self.act_2 = nn.ReLU()
        self.stage_10 = nn.Sequential(nn.Flatten(), nn.Linear(4 * 2 * 2, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_2(self.conv_1(x))
        x = self.act_2(self.conv_2(x))
        return self.stage_10(x)


class FunctionalNextToModule(nn.Module):
    """Functional relus next to a real submodule called ``relu_1``.

    The second functional relu would be ``relu_1`` by the per-scope count; that name is the
    real submodule's, so the functional one skips to ``relu_2``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.relu_1 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc(x))
        x = self.relu_1(x)
        return F.relu(x - 1)


class TrainOnlyBranch(nn.Module):
    """An ``if self.training:`` branch adds noise in train mode only."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(x)
        if self.training:
            x = x + torch.randn_like(x)
        return torch.relu(x)


class DropoutNet(nn.Module):
    """``nn.Dropout`` and ``F.dropout``: the module is a leaf in both modes; the function's
    ``training`` argument is a plain bool fixed at trace time, so both modes have one node."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.fc(x))
        return F.dropout(x, 0.1, self.training)


class InplaceReLU(nn.Module):
    """In-place ReLU modules and an in-place functional op keep their own nodes and names."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return F.relu_(x)


class TensorConstant(nn.Module):
    """Builds a constant tensor inside ``forward``.

    torch.fx stores such a tensor on the traced root with ``setattr`` as ``_tensor_constant0``;
    the constant's ``get_attr`` node has no name, as in torchvision. (A tensor attribute of the
    model, by contrast, is found by torch.fx and read with ``get_attr`` under its own name.)
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + torch.tensor([1.0, 2.0, 3.0])


class MixedModes(nn.Module):
    """A model whose submodules start in different modes (``head`` in eval, the rest in train)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), nn.Dropout())
        self.head = nn.Sequential(nn.Linear(4, 2), nn.Dropout())
        self.head.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def helper_with_loop(x: torch.Tensor) -> torch.Tensor:
    """Loops over a tensor's length: untraceable unless autowrapped."""
    out = x
    for _ in range(int(x.shape[0])):
        out = out + 1
    return out


class UsesHelper(nn.Module):
    """Calls ``helper_with_loop``, which needs ``autowrap_functions`` to trace."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return helper_with_loop(self.fc(x))


class DataDependent(nn.Module):
    """Branches on a tensor's value inside a submodule: untraceable by torch.fx."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x)


class Gate(nn.Module):
    """Returns ``x`` or ``-x`` depending on the sign of its sum."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x
        return -x


class ConcreteFlag(nn.Module):
    """A Python ``bool`` argument that picks the branch: trace it with ``concrete_args``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, negate: bool = False) -> torch.Tensor:
        x = self.fc(x)
        if negate:
            x = -x
        return x


class OptionalState(nn.Module):
    """``forward(x, state=None)`` that starts from zeros without a state, as recurrent models
    do: torch.fx traces ``state is None`` on a placeholder as ``False``.

    Names: ``fc``, ``drop``, ``getitem`` (``state[0]``, with a state only), ``add``, ``norm``,
    ``out``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)
        self.norm = nn.LayerNorm(4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor] | None = None) -> torch.Tensor:
        if state is None:
            state = (torch.ones(4),)
        return self.out(self.norm(self.drop(self.fc(x)) + state[0]))


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(True))


class TinyUNet(nn.Module):
    """A U-Net: the decoder reads the encoder's features (``enc1``, ``enc2``) through skip
    connections after the bottleneck, and the output reads the model's input again; dropout in
    the bottleneck draws random numbers in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = _conv_block(3, 4)
        self.down1 = nn.MaxPool2d(2)
        self.enc2 = _conv_block(4, 8)
        self.down2 = nn.MaxPool2d(2)
        self.mid = nn.Sequential(_conv_block(8, 16), nn.Dropout(0.2))
        self.up2 = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec2 = _conv_block(16, 8)
        self.up1 = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.dec1 = _conv_block(8, 4)
        self.out = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.down1(e1))
        m = self.mid(self.down2(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.out(d1) + x


#: fxtap's eval-mode names of each fixture, traced with its ``TRACER_KWARGS`` if it has any.
#: ``DataDependent`` and ``ConcreteFlag`` are left out: they need ``leaf_modules`` or
#: ``concrete_args`` and their tests spell out the names.
EXPECTED_NAMES: dict[type[nn.Module], list[str]] = {
    Nested: [
        "x",
        "stem",
        "stage.blocks.0.conv",
        "stage.blocks.0.bn",
        "stage.blocks.0.relu",
        "stage.blocks.0.add",
        "stage.blocks.1.conv",
        "stage.blocks.1.bn",
        "stage.blocks.1.relu",
        "stage.blocks.1.add",
        "stage.relu",
        "mean",
        "head",
    ],
    CalledTwice: ["x", "fc", "act", "add", "act_1", "add_1"],
    TopLevelFunctions: ["x", "conv", "flatten", "cat", "getattr", "getitem", "reshape", "sum"],
    SuffixedNames: ["x", "conv_1", "act_2", "conv_2", "act_2_1", "stage_10.0", "stage_10.1"],
    FunctionalNextToModule: ["x", "fc", "relu", "relu_1", "sub", "relu_2"],
    TrainOnlyBranch: ["x", "fc", "relu"],
    DropoutNet: ["x", "fc", "drop", "dropout"],
    InplaceReLU: ["x", "fc1", "relu", "fc2", "relu_1", "relu_"],
    TensorConstant: ["x", "fc", "add"],
    MixedModes: ["x", "body.0", "body.1", "head.0", "head.1"],
    UsesHelper: ["x", "fc", "helper_with_loop"],
    TinyUNet: [
        "x",
        *(f"enc1.{i}" for i in range(3)),
        "down1",
        *(f"enc2.{i}" for i in range(3)),
        "down2",
        *(f"mid.0.{i}" for i in range(3)),
        "mid.1",
        "up2",
        "cat",
        *(f"dec2.{i}" for i in range(3)),
        "up1",
        "cat_1",
        *(f"dec1.{i}" for i in range(3)),
        "out",
        "add",
    ],
}

#: Train-mode names, for the fixtures whose train graph differs from the eval graph.
EXPECTED_TRAIN_NAMES: dict[type[nn.Module], list[str]] = {
    TrainOnlyBranch: ["x", "fc", "randn_like", "add", "relu"],
}

#: torchvision's eval names, for the fixtures it names differently from fxtap.
TORCHVISION_NAMES: dict[type[nn.Module], list[str]] = {
    SuffixedNames: ["x", "conv", "act", "conv_1", "act_1", "stage_10.0", "stage_10.1"],
}

#: ``tracer_kwargs`` a fixture needs to trace at all.
TRACER_KWARGS: dict[type[nn.Module], dict[str, Any]] = {
    UsesHelper: {"autowrap_functions": [helper_with_loop]},
}

#: Every fixture of ``EXPECTED_NAMES`` that traces without options.
FIXTURES: tuple[type[nn.Module], ...] = tuple(k for k in EXPECTED_NAMES if k not in TRACER_KWARGS)


class ListBody(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.bn(self.conv1(x)).relu()).relu()


class ListRoot(nn.Module):
    """The root forward iterates over a list of images, as torchvision's detection models do."""

    def __init__(self) -> None:
        super().__init__()
        self.body = ListBody()
        self.head = nn.Linear(6, 2)

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.head(self.body(img[None]).mean((2, 3))) for img in images]


class DataGate(nn.Module):
    """No submodules, and a forward that branches on a value: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if float(x.sum()) > 0 else -x


class ListHead(nn.Module):
    """Iterates over its list argument (untraceable); calls an opaque module and a leaf."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = DataGate()
        self.fc = nn.Linear(6, 2)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.fc(self.gate(f)) for f in feats]


class ListPipeline(nn.Module):
    """A detection-like root: iterates over images, refuses train mode without targets.

    Capture path: ``body`` is an island (called once per image), ``head`` an untraced module
    whose calls are ``head.gate`` (opaque: no submodules, untraceable) and ``head.fc`` (leaf).
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = ListBody()
        self.head = ListHead()

    def forward(
        self, images: list[torch.Tensor], targets: list[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        if self.training and targets is None:
            raise ValueError("targets are needed in training mode")
        return self.head([self.body(img[None]).mean((2, 3)) for img in images])


class Parametrized(nn.Module):
    """Modules under torch's parametrizations: weight_norm (as wav2vec2's positional
    convolution), spectral_norm (power iteration buffers, updated in train mode), orthogonal."""

    def __init__(self) -> None:
        super().__init__()
        P = nn.utils.parametrizations
        self.conv = P.weight_norm(nn.Conv1d(2, 4, 3, padding=1), dim=2)
        self.proj = P.spectral_norm(nn.Linear(4, 4))
        self.rotate = P.orthogonal(nn.Linear(4, 4))
        self.plain = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).relu().mean(-1)
        return self.plain(self.rotate(self.proj(h)))


class SkippedBranch(nn.Module):
    """The root branches on the input's values: ``a`` runs for a positive sum, else ``b``.

    torch.fx cannot trace the root; a capture extractor reaches only one of the two modules.
    """

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.a(x)
        return self.b(x)
