"""Example-input shapes: suggest one a model accepts, and clean torch.fx's traced messages."""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import fx, nn

from fxtap.trace import restore_training

__all__ = ["suggest_input_shape", "without_proxies"]


#: Sizes after the channel axis tried for a first convolution of each kind, most usual first.
_TRIED_SIZES: tuple[tuple[type[nn.Module], tuple[tuple[int, ...], ...]], ...] = (
    (nn.Conv3d, ((16, 112, 112), (16, 224, 224), (8, 64, 64))),
    (nn.Conv2d, tuple((s, s) for s in (224, 32, 64, 128, 256, 299, 96, 384, 512))),
    (nn.Conv1d, ((1024,), (16000,), (256,))),
)


def suggest_input_shape(
    model: nn.Module,
    *,
    rejected: Sequence[tuple[int, ...]] = (),
    prefer: Sequence[tuple[int, ...]] = (),
) -> tuple[int, ...] | None:
    """An example-input shape the model accepts, or ``None`` when none of those tried fits.

    Shapes tried, in order: ``prefer``, the size the model declares (torchvision's
    ``image_size``, timm's ``pretrained_cfg['input_size']``), then shapes read from its first
    layer (a ``Conv3d`` suggests 16-frame clips, a ``Conv2d`` images, a ``Linear`` one feature
    vector). Each is checked by a forward pass on fake tensors (no memory, no compute, in eval
    mode; the model is left as it was). Shapes in ``rejected`` are never suggested.

    >>> suggest_input_shape(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 2)))
    (1, 3, 32, 32)
    """
    refused = {tuple(r) for r in rejected}
    tried = 0
    for shape in dict.fromkeys([*map(tuple, prefer), *_candidate_shapes(model)]):
        if shape in refused or tried >= 12:
            continue
        tried += 1
        if _accepts(model, shape):
            return shape
    return None


def _candidate_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = []
    size = getattr(model, "image_size", None)
    if isinstance(size, int) and size > 0:
        out.append((1, 3, size, size))
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and isinstance(cfg.get("input_size"), (tuple, list)):
        out.append((1, *map(int, cfg["input_size"])))
    if isinstance(model, fx.GraphModule):
        targets = [str(n.target) for n in model.graph.nodes if n.op == "call_module"]
        modules = [model.get_submodule(t) for t in targets]
    else:
        modules = list(model.modules())
    for module in modules:
        for kind, sizes in _TRIED_SIZES:
            if isinstance(module, kind):
                channels = int(getattr(module, "in_channels", 3))
                return out + [(1, channels, *s) for s in sizes]
        if isinstance(module, nn.Linear):
            return [*out, (1, module.in_features)]
    return out


def _accepts(model: nn.Module, shape: tuple[int, ...]) -> bool:
    """Whether ``model`` runs on a float input of ``shape``, checked on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    try:
        with (
            restore_training(model),
            torch.no_grad(),
            contextlib.redirect_stderr(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            model.eval()
            with FakeTensorMode(allow_non_fake_inputs=True) as mode:
                model(mode.from_tensor(torch.empty(shape)))
    except Exception:
        return False
    return True


def without_proxies(text: str) -> str:
    """Drop torch.fx's ``Proxy(getitem_2)`` from a message baked in at trace time.

    >>> without_proxies("Expected 224 but got Proxy(getitem_2)!")
    'Expected 224 but got a different value!'
    """
    return re.sub(r"Proxy\([\w.]+\)", "a different value", text)
