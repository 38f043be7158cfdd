"""Private module state: never stored; rebuilt on load from public state for the classes that
need it.

The safe format stores no attribute whose name starts with ``_``: such names are a library's
own business and change between releases (transformers 5.25 added ``_kernel_funcs``). A few
torch and torchvision classes read private attributes in ``forward``; each is listed here with
how it is rebuilt. Most derive from the public attributes the file holds (a convolution's
padding). Three torchvision classes keep a constructor argument only under a private name; the
file stores that argument under the constructor's own public name, in the module's
``arguments``, checked here on load.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from fxtap._compat import restore_derived_state
from fxtap.errors import LoadError
from fxtap.save._schema import as_bool, as_string, check_keys

__all__ = ["arguments_of", "restore_private"]

_LOSSES = frozenset({"l1", "smooth_l1", "giou", "diou", "ciou"})


def arguments_of(module: nn.Module) -> dict[str, Any]:
    """The constructor arguments ``module`` keeps only privately, by their public names."""
    rule = _rule(module)
    return rule.save(module) if rule is not None else {}


def restore_private(module: nn.Module, arguments: Mapping[str, Any], where: str) -> None:
    """Set the private attributes ``module``'s class reads, from its public state and the
    stored ``arguments`` (decoded plain data, checked here: exactly those its rule stores)."""
    restore_derived_state(module)
    rule = _rule(module)
    if rule is None:
        check_keys(arguments, set(), set(), where)
        return
    rule.restore(module, rule.check(arguments, where))


# --- torchvision -------------------------------------------------------------------------------


def _rules() -> list[Any]:
    """The torchvision rules, with their classes resolved (torchvision imported lazily)."""
    global _RULES
    if _RULES is None:
        from torchvision.models.detection import (
            anchor_utils,
            fcos,
            generalized_rcnn,
            retinanet,
            rpn,
            ssd,
            transform,
        )

        _RULES = [
            _Resolved(rpn.RegionProposalNetwork, _save_rpn, _check_rpn, _restore_rpn),
            _Resolved(
                transform.GeneralizedRCNNTransform,
                lambda m: {"skip_resize": bool(m._skip_resize)},
                lambda a, w: {"skip_resize": _one(a, "skip_resize", w, as_bool)},
                lambda m, a: object.__setattr__(m, "_skip_resize", a["skip_resize"]),
            ),
            _Resolved(
                retinanet.RetinaNetRegressionHead,
                lambda m: {"loss_type": m._loss_type},
                _check_loss,
                lambda m, a: object.__setattr__(m, "_loss_type", a["loss_type"]),
            ),
            # NOTE: a warn-once flag, set by __init__ and read by forward when scripted
            *(
                _Resolved(c, _nothing, _no_arguments, _not_warned)
                for c in (
                    generalized_rcnn.GeneralizedRCNN,
                    fcos.FCOS,
                    retinanet.RetinaNet,
                    ssd.SSD,
                )
            ),
            # NOTE: computed by __init__ from the scales and aspect ratios, by the class's
            # own method: the same values as at construction
            _Resolved(
                anchor_utils.DefaultBoxGenerator,
                _nothing,
                _no_arguments,
                lambda m, _a: object.__setattr__(
                    m, "_wh_pairs", m._generate_wh_pairs(len(m.aspect_ratios))
                ),
            ),
            # mobilenet's InvertedResidual._is_cn is read only while building a detection or
            # segmentation backbone, never by forward: a loaded block does without it
        ]
    return _RULES


@dataclass(frozen=True)
class _Resolved:
    cls_type: type
    save: Callable[[Any], dict[str, Any]]
    check: Callable[[Mapping[str, Any], str], dict[str, Any]]
    restore: Callable[[Any, Mapping[str, Any]], None]


_RULES: list[_Resolved] | None = None


def _rule(module: nn.Module) -> _Resolved | None:
    if not type(module).__module__.startswith("torchvision."):
        return None
    return next((r for r in _rules() if isinstance(module, r.cls_type)), None)


def _nothing(_module: Any) -> dict[str, Any]:
    return {}


def _no_arguments(arguments: Mapping[str, Any], where: str) -> dict[str, Any]:
    check_keys(arguments, set(), set(), where)
    return {}


def _not_warned(module: Any, _arguments: Mapping[str, Any]) -> None:
    object.__setattr__(module, "_has_warned", False)


def _save_rpn(module: Any) -> dict[str, Any]:
    return {
        "pre_nms_top_n": dict(module._pre_nms_top_n),
        "post_nms_top_n": dict(module._post_nms_top_n),
    }


def _check_rpn(arguments: Mapping[str, Any], where: str) -> dict[str, Any]:
    check_keys(arguments, {"pre_nms_top_n", "post_nms_top_n"}, None, where)
    checked = {}
    for name in ("pre_nms_top_n", "post_nms_top_n"):
        field = f"{where}.{name}"
        counts = arguments[name]
        if not (isinstance(counts, dict) and set(counts) == {"training", "testing"}):
            raise LoadError(f"{field}: expected a dict of 'training' and 'testing' counts")
        if not all(type(v) is int and v >= 0 for v in counts.values()):
            raise LoadError(f"{field}: the counts are non-negative integers")
        checked[name] = counts
    return checked


def _restore_rpn(module: Any, arguments: Mapping[str, Any]) -> None:
    object.__setattr__(module, "_pre_nms_top_n", dict(arguments["pre_nms_top_n"]))
    object.__setattr__(module, "_post_nms_top_n", dict(arguments["post_nms_top_n"]))


def _check_loss(arguments: Mapping[str, Any], where: str) -> dict[str, Any]:
    loss = _one(arguments, "loss_type", where, as_string)
    if loss not in _LOSSES:
        raise LoadError(f"{where}.loss_type: {loss!r:.40} is not one of {sorted(_LOSSES)}")
    return {"loss_type": loss}


def _one(arguments: Mapping[str, Any], name: str, where: str, check: Any) -> Any:
    check_keys(arguments, {name}, None, where)
    return check(arguments[name], f"{where}.{name}")
