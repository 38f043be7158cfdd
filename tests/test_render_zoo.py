"""Readable defaults on torchvision's classification models, measured from the drawn SVG.

Each model's default eval drawing (no options) must show at most ``MAX_VISIBLE`` nodes and
have an aspect ratio (long side over short side) of at most ``MAX_RATIO``. By default one
model per family is drawn; ``FXTAP_THOROUGH=1`` draws every classification model.
``python tests/test_render_zoo.py`` prints the worst five of the full list.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torchvision

from fxtap.render import render

MAX_VISIBLE = 200
MAX_RATIO = 5.0
ALL = torchvision.models.list_models(torchvision.models)
#: One per family: the worst-drawn member where it builds fast (the full list: FXTAP_THOROUGH=1).
FAMILY = [
    "alexnet", "convnext_tiny", "densenet201", "efficientnet_b7", "efficientnet_v2_l",
    "googlenet", "inception_v3", "maxvit_t", "mnasnet1_0", "mobilenet_v2",
    "mobilenet_v3_large", "regnet_x_3_2gf", "resnet152", "resnext101_64x4d", "shufflenet_v2_x2_0",
    "squeezenet1_1", "swin_t", "vgg19_bn", "vit_b_16", "wide_resnet101_2",
]  # fmt: skip
MODELS = ALL if os.environ.get("FXTAP_THOROUGH") == "1" else FAMILY


def measure(svg: Path) -> tuple[int, float]:
    """Visible nodes (``class="node ..."`` groups) and long side / short side of the SVG."""
    text = svg.read_text(encoding="utf-8")
    width, height = (
        float(re.search(rf'{k}="([\d.]+)pt"', text).group(1)) for k in ("width", "height")
    )  # type: ignore[union-attr]
    nodes = len(re.findall(r'<g id="[^"]*" class="node[ "]', text))
    return nodes, max(width / height, height / width)


def draw(name: str, out: Path) -> tuple[int, float]:
    model = torchvision.models.get_model(name, weights=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a builder's own warnings (init, deprecations)
        result = render(model, mode="eval", out_dir=out, name=name)
    (drawing,) = result.drawings
    assert drawing.path is not None, result.messages
    return measure(drawing.path)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
@pytest.mark.parametrize("name", MODELS)
def test_default_drawing_is_readable(name: str, tmp_path: Path) -> None:
    assert name in ALL
    nodes, ratio = draw(name, tmp_path)
    assert nodes <= MAX_VISIBLE, f"{name}: {nodes} visible nodes"
    assert ratio <= MAX_RATIO, f"{name}: aspect ratio 1:{ratio:.1f}"


def test_family_list_names_real_models() -> None:
    assert set(FAMILY) <= set(ALL)


if __name__ == "__main__":
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ALL:
            rows.append((name, *draw(name, Path(tmp))))
            print(*rows[-1], flush=True, file=sys.stderr)
    print("worst by ratio:", sorted(rows, key=lambda r: -r[2])[:5])
    print("worst by nodes:", sorted(rows, key=lambda r: -r[1])[:5])
