"""Shapes: propagate example inputs through a graph, describe values, suggest inputs that fit."""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from fxtap import _compat
from fxtap._fx import NAME_KEY, target_text
from fxtap.errors import InputShapeError, InvalidArgumentError
from fxtap.trace import restore_training

__all__ = [
    "VALUE_KEY",
    "describe_value",
    "propagate_shapes",
    "suggest_input_shape",
    "without_proxies",
]


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
    try:
        with (
            restore_training(model),
            torch.no_grad(),
            contextlib.redirect_stderr(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            model.eval()
            with _compat.fake_inputs() as make:
                model(make(shape))
    except Exception:
        return False
    return True


def without_proxies(text: str) -> str:
    """Drop torch.fx's ``Proxy(getitem_2)`` from a message baked in at trace time.

    >>> without_proxies("Expected 224 but got Proxy(getitem_2)!")
    'Expected 224 but got a different value!'
    """
    return re.sub(r"Proxy\([\w.]+\)", "a different value", text)


#: ``node.meta`` key holding what a node returned on the example input, as text (set by
#: ``propagate_shapes``), such as ``None``, ``int 224`` or a tensor's shape and dtype.
VALUE_KEY = "fxtap_value"


def propagate_shapes(
    gm: fx.GraphModule,
    example_inputs: Sequence[torch.Tensor] | Mapping[str, Any],
    *,
    model_name: str = "model",
    training: bool | None = None,
) -> None:
    """Fill ``node.meta['tensor_meta']`` by running ``gm`` on fake copies of the inputs.

    Runs on fake tensors (no compute, nothing of the model touched); falls back to a real run
    without gradients, with buffers put back afterwards, when an op has no fake kernel.
    ``training`` runs the submodules in that mode (the mode the graph was traced in), and puts
    their flags back afterwards; ``None`` leaves them as they are.

    Raises:
        InputShapeError: the inputs do not fit the model; names the node that rejected them.
    """
    inputs = _check_inputs(example_inputs, gm)
    with restore_training(gm):
        if training is not None:
            _set_mode(gm, training)
        _propagate(gm, inputs, model_name)


def _set_mode(gm: fx.GraphModule, training: bool) -> None:
    for module in gm.modules():
        module.training = training


def _propagate(gm: fx.GraphModule, inputs: tuple[Any, ...], model_name: str) -> None:
    try:
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            mode = _compat.fake_tensor_mode()  # CompatError with fallbacks forced: real run
            _ShapeProp(gm, fake_mode=mode).propagate(*inputs)
        return
    except Exception as fake_exc:
        first_error: Exception = fake_exc
    saved = {k: b.clone() for k, b in gm.named_buffers()}
    prop = _ShapeProp(gm)
    try:
        # NOTE: ShapeProp prints a traceback for every failing node; the error says it better.
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            prop.propagate(*inputs)
    except Exception as exc:
        raise InputShapeError(_shape_message(model_name, inputs, exc, prop.current, gm)) from (
            first_error
        )
    finally:
        with torch.no_grad():
            for k, b in gm.named_buffers():
                b.copy_(saved[k])


class _ShapeProp(ShapeProp):
    """``ShapeProp`` that remembers the node it is running, for error messages."""

    current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        result = super().run_node(n)
        n.meta[VALUE_KEY] = describe_value(result)
        return result


def describe_value(value: Any, *, limit: int = 3) -> str:
    """What a node returned, as shown in node tables and drawings.

    >>> describe_value((torch.zeros(2, 3), None))
    '(2×3 float32, None)'
    """
    if isinstance(value, torch.Tensor):
        dims = "×".join(str(d) for d in value.shape) or "scalar"
        return f"{dims} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, torch.Size):
        return "Size(" + ", ".join(map(str, value)) + ")"
    if value is None or isinstance(value, (bool, int, float, str)):
        return "None" if value is None else f"{type(value).__name__} {value!r:.20}"
    if isinstance(value, (tuple, list)):
        parts = [describe_value(v, limit=limit) for v in value[:limit]]
        more = ", …" if len(value) > limit else ""
        inner = ", ".join(parts) + more
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, Mapping):
        return (
            "{"
            + ", ".join(f"{k}: {describe_value(v)}" for k, v in list(value.items())[:limit])
            + "}"
        )
    return type(value).__name__


def _check_inputs(example_inputs: Any, gm: fx.GraphModule) -> tuple[Any, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, Mapping):
        # NOTE: keyword inputs (the export path's) go to the placeholders of the same name;
        # non-tensor ones were fixed when the model was exported and have none.
        names = [str(n.target) for n in gm.graph.find_nodes(op="placeholder")]
        missing = [n for n in names if n not in example_inputs]
        if missing:
            raise InvalidArgumentError(
                f"example_inputs has no {missing[0]!r}; the graph takes "
                f"{', '.join(map(repr, names))}. Pass example_inputs with those keys"
            )
        return tuple(example_inputs[n] for n in names)
    if not isinstance(example_inputs, Sequence):
        raise InvalidArgumentError(
            f"example_inputs {example_inputs!r:.80} is a {type(example_inputs).__name__}; "
            "expected a tensor or a tuple of tensors, e.g. (torch.randn(1, 3, 224, 224),)"
        )
    return tuple(example_inputs)


def _shape_message(
    model_name: str,
    inputs: tuple[Any, ...],
    exc: Exception,
    node: fx.Node | None,
    gm: fx.GraphModule | None = None,
) -> str:
    shapes = ", ".join(
        "x".join(map(str, t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
        for t in inputs
    )
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    lines = [ln.strip() for ln in str(cause).strip().splitlines() if ln.strip()]
    reason = lines[0] if lines else type(cause).__name__
    where = ""
    if node is not None:
        where = f" at node {node.meta.get(NAME_KEY, node.name)!r} ({node.op} {target_text(node)})"
    rejected = [tuple(t.shape) for t in inputs if isinstance(t, torch.Tensor)]
    shape = (
        suggest_input_shape(gm, rejected=rejected) if gm is not None and len(inputs) == 1 else None
    )
    example = f", e.g. (torch.randn{shape},)" if shape else ""
    return (
        f"example input of shape {shapes} does not fit {model_name}{where}: "
        f"{without_proxies(reason)}. Pass example_inputs of the shape the model expects{example}"
    )
