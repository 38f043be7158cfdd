"""The HTML viewer (fxtap/render/_html.py) in a real headless Chromium, driven by Playwright.

Uses Debian's ``chromium`` (``make test`` installs it as root), never a downloaded browser.
Skipped when Chromium, Graphviz's ``dot`` or the ``playwright`` package is missing.
"""

from __future__ import annotations

import re
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from fxtap.render import render
from support.models import Nested
from support.render import blank

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
pytestmark = [
    pytest.mark.chromium,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
    pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Viewers of ResNet-50 (with shapes) and GoogLeNet, drawn once for the module."""
    out = tmp_path_factory.mktemp("viewer")
    made = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's GoogLeNet init warning
        models = {
            "resnet50": torchvision.models.resnet50(weights=None),
            "googlenet": torchvision.models.googlenet(weights=None, init_weights=False),
        }
    for name, model in models.items():
        example = torch.zeros(1, 3, 224, 224) if name == "resnet50" else None
        r = render(model, out_dir=out, name=name, html=True, example_inputs=example)
        assert r.html is not None and r.html in r.paths
        made[name] = r.html
    return made


def open_page(browser: Any, path: Path, errors: list[str]) -> Any:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: errors.append(r.url) if not r.url.startswith("file:") else None)
    page.goto(path.as_uri())
    return page


def in_viewport(page: Any, element_id: str) -> bool:
    box = page.locator(f'[id="{element_id}"]').bounding_box()
    stage = page.locator("#stage").bounding_box()
    assert box is not None and stage is not None
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    return bool(
        stage["x"] <= cx <= stage["x"] + stage["width"]
        and stage["y"] <= cy <= stage["y"] + stage["height"]
    )


def test_loads_with_no_console_errors_and_is_not_blank(
    browser: Any, pages: dict[str, Path]
) -> None:
    for path in pages.values():
        errors: list[str] = []
        page = open_page(browser, path, errors)
        shot = page.screenshot()
        assert not blank(shot)
        assert page.locator(".view.on svg g.node").count() > 20
        page.context.close()
        assert errors == [], f"{path.name}: {errors}"


def test_search_centers_layer3_1_conv2_in_resnet50(browser: Any, pages: dict[str, Path]) -> None:
    errors: list[str] = []
    page = open_page(browser, pages["resnet50"], errors)
    mode = page.evaluate("window.fxtap.state().mode")
    target = f"{mode}:layer3.1.conv2"
    assert not in_viewport(page, target) or page.evaluate("window.fxtap.state().s") < 0.7
    page.fill("#search", "3.1.conv2")  # a partial name
    assert page.locator("#matches li").first.inner_text() == "layer3.1.conv2"
    page.press("#search", "Enter")
    assert in_viewport(page, target)
    assert page.evaluate("window.fxtap.state().s") >= 1  # readable, not a speck
    assert page.input_value("#fullname") == "layer3.1.conv2"
    assert "589,824" in page.inner_text("#row")  # conv2's parameters, from the node table
    # A folded name is found too: it centres the block drawn for it.
    page.fill("#search", "layer3.4.conv2")
    page.press("#search", "Enter")
    assert "drawn as" in page.inner_text("#row") and in_viewport(page, target)
    page.context.close()
    assert errors == []


def test_click_copies_the_full_name(browser: Any, pages: dict[str, Path]) -> None:
    errors: list[str] = []
    page = open_page(browser, pages["resnet50"], errors)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.fill("#search", "layer2.0.downsample.0")
    page.press("#search", "Enter")
    mode = page.evaluate("window.fxtap.state().mode")
    page.locator(f'[id="{mode}:layer2.0.downsample.0"]').click()
    assert page.input_value("#fullname") == "layer2.0.downsample.0"
    assert page.locator("#fullname").is_visible()
    row = page.inner_text("#row")
    assert "call_module" in row and "Conv2d" in row and "resnet.py:" in row and "1×512×28×28" in row
    page.wait_for_function("document.getElementById('copied').textContent === 'copied'")
    assert page.evaluate("navigator.clipboard.readText()") == "layer2.0.downsample.0"
    page.context.close()
    assert errors == []


def test_train_eval_toggle_changes_googlenet(browser: Any, pages: dict[str, Path]) -> None:
    errors: list[str] = []
    page = open_page(browser, pages["googlenet"], errors)
    drawn = (
        "Array.from(document.querySelectorAll('.view.on g.node'), g => g.id.replace(/^\\w+:/, ''))"
    )
    page.click("button.mode[data-mode=eval]")
    eval_ids = set(page.evaluate(drawn))
    eval_shot = page.screenshot()
    page.click("button.mode[data-mode=train]")
    train_ids = set(page.evaluate(drawn))
    assert page.evaluate("window.fxtap.state().mode") == "train"
    assert {i for i in train_ids - eval_ids if i.startswith("aux1")}, "aux1 drawn in train only"
    assert page.screenshot() != eval_shot
    # Train-only nodes stand out in the SVG: their class marks them.
    assert page.locator(".view.on g.node.only").count() > 0
    page.context.close()
    assert errors == []


def test_kept_pruned_filter_and_expand(browser: Any, tmp_path: Path) -> None:
    from fxtap import create_feature_extractor

    ex = create_feature_extractor(Nested(), {"stem": "s"}, keep_traces=True)
    r = render(ex, mode="eval", out_dir=tmp_path, html=True)
    assert r.html is not None
    errors: list[str] = []
    page = open_page(browser, r.html, errors)
    pruned = page.locator(".view.on g.node.pruned").first
    assert pruned.evaluate("g => getComputedStyle(g).opacity") == "1"
    page.select_option("#filter", "kept")
    assert float(pruned.evaluate("g => getComputedStyle(g).opacity")) < 0.2
    # Nested's two pruned blocks fold into one; expand draws every node.
    assert page.locator(".view.on [id='eval:stage.blocks.1.conv']").count() == 0
    page.click("#expand")
    assert page.locator(".view.on [id='eval+:stage.blocks.1.conv']").count() == 1
    page.context.close()
    assert errors == []


def test_repr_html_is_the_viewer(tmp_path: Path) -> None:
    r = render(Nested(), mode="eval", out_dir=tmp_path)
    frame = r._repr_html_()
    assert frame is not None and frame.startswith("<iframe srcdoc=")
    assert r.viewer is not None and "fxtap-data" in frame
    # Nothing is fetched: no src= or href= other than an inline data: URL.
    assert not re.search(r'\b(src|href)="(?!data:)', r.viewer)
    assert r.html is None  # the file is written with html=True only


@pytest.mark.slow
def test_5000_node_viewer_first_paint_within_3_s(browser: Any, tmp_path: Path) -> None:
    model = nn.Sequential(*[nn.ReLU() for _ in range(5000)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = render(model, mode="eval", out_dir=tmp_path, html=True, max_nodes=None)
    assert r.html is not None and r.drawings[0].nodes >= 5000
    errors: list[str] = []
    start = time.perf_counter()
    page = open_page(browser, r.html, errors)
    page.wait_for_function("window.fxtapPainted !== undefined")
    wall = time.perf_counter() - start
    # The page's own clock: navigation start to the first frame with the drawing shown.
    painted = page.evaluate("window.fxtapPainted")
    print(f"5,000-node viewer: drawing painted at {painted:.0f} ms, {wall:.2f} s wall")
    assert 0 < painted <= 3000
    page.context.close()
    assert errors == []


def test_cli_render_html_writes_the_viewer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fxtap.cli import main

    argv = [
        "render",
        "tests/support/models.py:Nested",
        "--input",
        "1x3x8x8",
        "--html",
        "-o",
        str(tmp_path),
    ]
    assert main(argv) == 0
    page = tmp_path / "Nested.html"
    assert f"wrote {page}" in capsys.readouterr().out
    text = page.read_text(encoding="utf-8")
    assert 'id="fxtap-data"' in text and re.search(r"1×\d+×8×8 float32", text)
    assert main([*argv[:-2], "--format", "png", "-o", str(tmp_path)]) == 1
    assert "--format svg" in capsys.readouterr().err


# --- first hour: search feedback, names, column order, the first view --------------------------


def stage_scale(page: Any) -> float:
    return float(page.evaluate("window.fxtap.state().s"))


def test_a_search_without_match_says_so(browser: Any, pages: dict[str, Path]) -> None:
    errors: list[str] = []
    page = open_page(browser, pages["googlenet"], errors)
    page.fill("#search", "no_such_layer")
    assert page.locator("#matches").is_visible()
    assert page.inner_text("#matches") == 'no node matches "no_such_layer" in the eval graph'
    page.press("#search", "Enter")
    assert page.locator("#matches").is_visible()  # still said, nothing else happens
    assert page.input_value("#fullname") == ""
    page.fill("#search", "inception5b")
    assert "no node matches" not in page.inner_text("#matches")
    page.context.close()
    assert errors == []


def test_the_match_list_shows_only_node_names(browser: Any, pages: dict[str, Path]) -> None:
    errors: list[str] = []
    page = open_page(browser, pages["googlenet"], errors)
    page.click("button.mode[data-mode=train]")
    for query in ("fc2", "aux1", "relu", "x"):
        page.fill("#search", query)
        shown = page.locator("#matches li").all_inner_texts()
        assert shown and not [n for n in shown if "@" in n or n.startswith("fxtap:")], shown
    page.fill("#search", "aux1.fc2")
    assert page.locator("#matches li").first.inner_text() == "aux1.fc2"
    page.context.close()
    assert errors == []


def test_wrapped_columns_read_left_to_right(browser: Any, pages: dict[str, Path]) -> None:
    errors: list[str] = []
    for path in pages.values():
        page = open_page(browser, path, errors)
        page.click("#fit")
        mode = page.evaluate("window.fxtap.state().mode")
        columns = page.locator(f'.view.on [id^="{mode}:fxtap:column"]')
        boxes = {
            int(el.get_attribute("id").rpartition("column")[2]): el.bounding_box()["x"]
            for el in columns.all()
        }
        assert len(boxes) >= 2, f"{path.name} is not wrapped"
        xs = [boxes[c] for c in sorted(boxes)]
        assert xs == sorted(xs), f"{path.name}: columns out of order {boxes}"
        # An edge between columns is a pair of stubs; clicking one goes to the other end.
        stub = page.locator(f'.view.on [id^="{mode}:fxtap:to:"]').first
        target = stub.get_attribute("id").rpartition(">")[2]
        stub.click()
        assert page.input_value("#fullname") == target and in_viewport(page, f"{mode}:{target}")
        page.context.close()
    assert errors == []


def test_first_view_without_taps_is_readable_and_the_whole_graph_one_click_away(
    browser: Any, pages: dict[str, Path]
) -> None:
    errors: list[str] = []
    page = open_page(browser, pages["googlenet"], errors)
    assert stage_scale(page) >= 0.75  # labels readable without zooming
    assert in_viewport(page, f"{page.evaluate('window.fxtap.state().mode')}:x")  # the start
    assert "whole graph" in page.inner_text("#copied")
    page.click("#fit")
    assert stage_scale(page) < 0.75
    drawing = page.locator(".view.on svg").bounding_box()
    stage = page.locator("#stage").bounding_box()
    assert drawing is not None and stage is not None
    assert drawing["width"] <= stage["width"] + 1 and drawing["height"] <= stage["height"] + 1
    page.context.close()
    assert errors == []


def test_first_view_frames_the_taps(browser: Any, tmp_path: Path) -> None:
    from fxtap import create_feature_extractor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's GoogLeNet init warning
        model = torchvision.models.googlenet(weights=None, init_weights=False)
    taps = {"inception4c": "mid", "inception4d": "later"}
    ex = create_feature_extractor(model, taps, keep_traces=True)
    r = render(ex, mode="eval", out_dir=tmp_path, html=True)
    assert r.html is not None
    errors: list[str] = []
    page = open_page(browser, r.html, errors)
    assert stage_scale(page) >= 0.75
    for name in ex.outputs["eval"].values():
        assert in_viewport(page, f"eval:{name}"), name
    assert "requested nodes" in page.inner_text("#copied")
    page.click("#fit")
    assert stage_scale(page) < 0.75
    page.context.close()
    assert errors == []


#: Module names that are markup: the page must show them as text, and still work.
MARKUP_NAMES = ["<!--<script>", "</script><script>pwned=1</script>", "a&amp;b", "x>y"]


def _markup_model() -> nn.Module:
    model = nn.Sequential()
    for name in MARKUP_NAMES:
        model.add_module(name, nn.Linear(2, 2))
    return model


def test_embedded_json_holds_no_markup_characters(tmp_path: Path) -> None:
    r = render(_markup_model(), mode="eval", out_dir=tmp_path, html=True)
    assert r.html is not None
    text = r.html.read_text(encoding="utf-8")
    opening = '<script type="application/json" id="fxtap-data">'
    start = text.index(opening) + len(opening)
    payload = text[start : text.index("</script>", start)]
    assert not set("<>&") & set(payload), payload[:200]
    assert "\\u003c!--\\u003cscript\\u003e" in payload and "a\\u0026amp;b" in payload
    import json

    assert set(MARKUP_NAMES) <= set(json.loads(payload)["rows"]["eval"])


def test_markup_in_module_names_leaves_the_page_working(browser: Any, tmp_path: Path) -> None:
    r = render(_markup_model(), mode="eval", out_dir=tmp_path, html=True)
    assert r.html is not None
    errors: list[str] = []
    page = open_page(browser, r.html, errors)
    assert page.evaluate("typeof window.fxtap") == "object"  # the viewer's script ran
    assert page.evaluate("window.pwned") is None  # the injected one did not
    for name in MARKUP_NAMES:
        page.fill("#search", name)
        page.press("#search", "Enter")
        assert page.input_value("#fullname") == name
    page.context.close()
    assert errors == []
