"""Mutation fuzzing of real saved manifests: the safe loader refuses or builds, never runs code.

Each example takes the manifest ``fxtap.save`` wrote for a small fixture, resnet18,
mobilenet_v3_small or vit_b_16 (and a timm model when timm is installed), changes one place in
it (replaces a value with a hostile string, another name from the file or a value of another
type; deletes or adds a key; duplicates, drops or swaps list items; inserts a character that
NFKC folds into ASCII, such as a fullwidth letter, into a string or a key) and loads the
result.
Loading must raise ``LoadError`` or return an extractor; nothing else may escape and no
payload may create its sentinel file. A mutation of data that the graph does not compute with
(``torch``, ``kept``, ``opaque``, ``fxtap_name``) must load and give the original's outputs bit
for bit. A mutation of a value the graph computes with (an argument, a configuration, a
target) may load and compute something else, or fail with torch's own error when called: the
loader cannot know what a file meant, only that it runs nothing but allowlisted code.

``FXTAP_HYPOTHESIS_PROFILE=thorough`` runs 10,000 examples instead of 500 (``quick``: 50).
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import tokenize
import unicodedata
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fxtap import create_feature_extractor
from fxtap.errors import LoadError
from fxtap.save import MANIFEST, WEIGHTS, _manifest, _safe_load
from fxtap.save._pack import pack
from support.saving import Small, json_paths

EXAMPLES = {"ci": 500, "thorough": 10_000, "quick": 50}[
    os.environ.get("FXTAP_HYPOTHESIS_PROFILE", "ci")
]
SENTINEL = Path(f"/tmp/fxtap-fuzz-sentinel-{os.getpid()}")
PAYLOAD = f"__import__('os').system('touch {SENTINEL}')"
HOSTILE = [
    f"x={PAYLOAD}", f'size"); {PAYLOAD}; ("', "torch:os.system", "builtins:eval",
    "torch:hub.load", "operator:attrgetter", "__class__", "__call__", "__globals__", "_modules",
    "forward", "self", "training", "lambda", "subprocess:Popen", "torch.nn:modules.conv.Conv2d",
    "1x", "", "a.b", "0", "__import__", "*args", "same_as", "node", "tuple", "dict",
    "_\uff3fclass\uff3f\uff3f", "\uff45\uff58\uff45\uff43", "\uff54\uff4f\uff3f\uff46\uff4f\uff4c\uff44\uff45\uff52",
]  # fmt: skip
#: Characters NFKC folds into ASCII name characters: fullwidth, mathematical, ligatures...
FOLDED = [c for c in map(chr, range(0x80, 0x20000)) if re.fullmatch(
    r"[A-Za-z0-9_]+", unicodedata.normalize("NFKC", c), re.ASCII)][::7]  # fmt: skip
#: Fields that are data only: mutating them must not change what the extractor computes.
NEUTRAL = ("torch", "kept", "opaque", "fxtap_name")
#: What a loaded but changed graph may raise when called (torch's own checks).
CALL_ERRORS = (RuntimeError, TypeError, ValueError, IndexError, KeyError, AssertionError)
CALL_ERRORS += (ZeroDivisionError, OverflowError, NotImplementedError, AttributeError)


@dataclass(frozen=True)
class Saved:
    """One saved extractor: its parsed manifest, every path in it, weights, input, outputs."""

    manifest: dict[str, Any]
    paths: tuple[tuple[Any, ...], ...]
    strings: tuple[str, ...]
    stored: dict[str, torch.Tensor]
    x: torch.Tensor
    expected: tuple[torch.Tensor, ...]


def _strings(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    found = set(value) if isinstance(value, dict) else set()
    for item in items:
        found |= _strings(item)
    return found


def run(extractor: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    extractor.eval()  # eval only: train mode would update the cached buffers in place
    with torch.no_grad():
        return tuple(v.clone() for v in extractor(x).values())


@cache
def saved(name: str) -> Saved:
    torch.manual_seed(0)
    if name == "small":
        model, x = Small(), torch.randn(2, 3, 8, 8)
    elif name == "timm":
        import timm

        model, x = timm.create_model("resnet10t", num_classes=5), torch.randn(1, 3, 32, 32)
    else:
        from support.zoo import build  # cheap deterministic weights, small heads and images

        model, x = build(name), torch.randn(1, 3, 32, 32)
    extractor = create_feature_extractor(model, [":output"])
    buffer = io.BytesIO()
    pack(extractor, buffer)
    with zipfile.ZipFile(buffer) as archive:
        manifest = _safe_load.parse(archive.read(MANIFEST))
        from safetensors.torch import load as load_tensors

        stored = load_tensors(archive.read(WEIGHTS))
    loaded = _safe_load.build(_manifest.check(manifest, trust=False), stored, trust=False)
    expected = run(extractor, x)
    assert all(map(torch.equal, expected, run(loaded, x))), "the pristine file differs"
    return Saved(
        manifest,
        tuple(json_paths(manifest)),
        tuple(sorted(_strings(manifest))),
        stored,
        x,
        expected,
    )


def _replace(value: Any, path: tuple[Any, ...], new: Any, op: str) -> Any:
    """A copy of ``value`` with the item at ``path`` replaced (copying only along the path)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    copy: Any = dict(value) if isinstance(value, dict) else list(value)
    if rest:
        copy[head] = _replace(value[head], rest, new, op)
    elif op == "delete":
        del copy[head]
    elif op == "duplicate" and isinstance(copy, list):
        copy.insert(head, copy[head])
    elif op == "swap" and isinstance(copy, list) and len(copy) > 1:
        other = (head + 1) % len(copy)
        copy[head], copy[other] = copy[other], copy[head]
    elif op == "rename" and isinstance(copy, dict):
        copy[new if isinstance(new, str) else str(new)] = copy.pop(head)
    elif op == "add_key" and isinstance(copy, dict):
        copy[new if isinstance(new, str) else "extra"] = 1
    else:
        copy[head] = new
    return copy


MODELS = ["small"] * 8 + ["resnet18", "mobilenet_v3_small", "vit_b_16"]
if "timm" in sys.modules or __import__("importlib").util.find_spec("timm"):
    MODELS.append("timm")

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 1 << 40), st.floats(allow_nan=False),
    st.sampled_from(HOSTILE), st.text(max_size=8),
)  # fmt: skip
json_values = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["node", "tuple", "dict", "dtype", "x"]), inner, max_size=2
        ),
    ),
    max_leaves=6,
)


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, tuple[Any, ...], str, Any]:
    name = draw(st.sampled_from(MODELS))
    data = saved(name)
    path = data.paths[draw(st.integers(0, len(data.paths) - 1))]
    op = draw(st.sampled_from(["replace", "replace", "string", "delete", "duplicate", "swap"]))
    op = draw(st.sampled_from([op, "rename", "add_key", "fold"])) if draw(st.booleans()) else op
    if op == "fold":  # a character NFKC folds into ASCII, inserted into a string or a key
        value = _at(data.manifest, path)
        key = path[-1] if path and isinstance(path[-1], str) else None
        text = value if isinstance(value, str) else key
        if text is None:
            return name, path, "replace", draw(json_values)
        at = draw(st.integers(0, len(text)))
        new: Any = text[:at] + draw(st.sampled_from(FOLDED)) + text[at:]
        return name, path, "replace" if isinstance(value, str) else "rename", new
    if op == "string":
        new: Any = draw(st.sampled_from(data.strings))
        op = "replace"
    else:
        new = draw(st.one_of(json_values, st.sampled_from(data.strings)))
    return name, path, op, new


def _code_names(code: str) -> list[str]:
    """The identifiers of generated code (string literals may hold anything)."""
    tokens = tokenize.generate_tokens(io.StringIO(code).readline)
    return [t.string for t in tokens if t.type == tokenize.NAME]


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutation=mutations())
def test_mutated_manifests_load_or_raise_load_error(mutation: tuple[Any, ...]) -> None:
    name, path, op, new = mutation
    data = saved(name)
    if not path and op in ("delete", "rename", "add_key", "duplicate", "swap"):
        op = "replace"
    mutated = _replace(data.manifest, path, new, op)
    if name == "small":  # the bounded parse too, on the small file where it is cheap
        mutated = _safe_load.parse(json.dumps(mutated).encode())
    try:
        checked = _manifest.check(mutated, trust=False)
        loaded = _safe_load.build(checked, data.stored, trust=False)
    except LoadError:
        event(f"{name}: refused")
        assert not SENTINEL.exists()
        return
    for training in (True, False):  # whatever loads, its generated code names ASCII only
        names = _code_names(loaded.train(training).code)
        assert all(n.isascii() for n in names), (path, op, new)
    neutral = any(key in NEUTRAL for key in path if isinstance(key, str))
    event(f"{name}: loaded ({'neutral' if neutral else 'changed'} field)")
    try:
        got = run(loaded, data.x)
    except CALL_ERRORS:
        assert not neutral, f"a change of {path} broke the extractor"
        event(f"{name}: loaded, call failed in torch")
    else:
        same = len(got) == len(data.expected) and all(map(torch.equal, got, data.expected))
        assert same or not neutral, f"a change of {path} changed the outputs"
        event(f"{name}: loaded, {'same' if same else 'different'} outputs")
    assert not SENTINEL.exists(), f"the payload ran: {path} {op} {new!r}"


def test_unmutated_manifests_round_trip() -> None:
    for name in dict.fromkeys(MODELS):
        data = saved(name)
        checked = _manifest.check(data.manifest, trust=False)
        loaded = _safe_load.build(checked, data.stored, trust=False)
        assert all(map(torch.equal, run(loaded, data.x), data.expected)), name


@pytest.fixture(autouse=True, scope="module")
def _no_sentinel() -> Any:
    SENTINEL.unlink(missing_ok=True)
    yield
    assert not SENTINEL.exists()
