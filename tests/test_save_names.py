"""Names read from a file: one ASCII rule, whatever Unicode folds into ASCII when Python compiles.

Python normalizes identifiers with NFKC when it compiles code, so ``_\\uff3fclass\\uff3f\\uff3f``
(fullwidth low lines) is a valid identifier that passes ``startswith("__")`` and compiles as
``__class__``. The reported exploit used that to reach ``exec`` from a file loaded with
``trust=False``. These tests reproduce it (through ``load`` and through ``fxtap nodes FILE``),
then feed every character NFKC maps into ASCII name characters, in every field of a manifest
that becomes a name, and expect ``LoadError`` each time; the same field with a plain ASCII name
passes, so a refusal is the rule's doing. ``FXTAP_THOROUGH=1`` feeds every character to every
field; ``make test`` feeds every character to the rule itself and a sample to each field.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import sys
import unicodedata
import zipfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fxtap import create_feature_extractor
from fxtap.cli import main
from fxtap.errors import LoadError
from fxtap.save import MANIFEST, load, save
from fxtap.save._config import Modules, check_value
from fxtap.save._manifest import check
from fxtap.save._ops import check_op
from fxtap.save._pack import pack
from fxtap.save._schema import name
from support.saving import (
    Small,
    folded_dunder,
    fullwidth,
    fullwidth_exploit,
    rewrite_manifest,
    to_folder_exploit,
)

THOROUGH = os.environ.get("FXTAP_THOROUGH") == "1"
_ASCII_NAME = re.compile(r"[A-Za-z0-9_]+", re.ASCII)
#: Every non-ASCII character that NFKC maps to ASCII letters, digits or underscores.
FOLDED = tuple(
    chr(cp)
    for cp in range(0x80, 0x110000)
    if _ASCII_NAME.fullmatch(unicodedata.normalize("NFKC", chr(cp)))
)
SAMPLE = FOLDED if THOROUGH else (*FOLDED[::37], "\uff3f", "\ufe4d", "\ufe33", "\U0001d41e")


def test_the_folded_characters_are_many_and_python_folds_them() -> None:
    assert len(FOLDED) > 1000
    assert "\uff3f" in FOLDED and "\U0001d41e" in FOLDED  # fullwidth low line, bold e
    namespace: dict[str, Any] = {}
    exec(compile(f"{folded_dunder('name')} = 1", "<folded>", "exec"), namespace)
    assert "__name__" in namespace  # what the rule guards against


@pytest.mark.parametrize("template", ["{}", "x{}", "_{}", "layer{}1", "{}x"])
def test_the_rule_refuses_every_folded_character(template: str) -> None:
    for c in FOLDED:
        with pytest.raises(LoadError, match="not a plain identifier"):
            name(template.format(c), "field")


def test_the_rule_accepts_plain_names_and_refuses_the_rest() -> None:
    for ok in ("layer1", "_private", "x_1", "A", "_0"):
        assert name(ok, "field") == ok
    for bad in ("__class__", "__x", "class", "1x", "", "a.b", "a-b", "a" * 201, 3, None):
        with pytest.raises(LoadError):
            name(bad, "field")
    with pytest.raises(LoadError, match="starts with '_'"):
        name("_apply", "field", private=False)
    with pytest.raises(LoadError, match="shadow"):
        name("forward", "field", shadows={"forward"})


# --- every field that becomes a name ------------------------------------------------------------


@cache
def _small_manifest() -> dict[str, Any]:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    pack(create_feature_extractor(Small(), [":output", "bn"]), buffer)
    with zipfile.ZipFile(buffer) as archive:
        return json.loads(archive.read(MANIFEST))


def _nodes(m: dict[str, Any], op: str, target: Any = None) -> list[dict[str, Any]]:
    return [
        n
        for mode in ("train", "eval")
        for n in m["graphs"][mode]
        if n["op"] == op and (target is None or n["target"] == target)
    ]


def _rename_node(m: dict[str, Any], old: str, new: str) -> None:
    for mode in ("train", "eval"):
        text = json.dumps(m["graphs"][mode])
        text = text.replace(f'"name": "{old}"', f'"name": {json.dumps(new)}')
        text = text.replace(f'{{"node": "{old}"}}', f'{{"node": {json.dumps(new)}}}')
        m["graphs"][mode] = json.loads(text)


def _module_path(m: dict[str, Any], new: str) -> None:
    m["modules"][new] = m["modules"].pop("conv")
    for node in _nodes(m, "call_module", "conv"):
        node["target"] = new


def _child(m: dict[str, Any], new: str) -> None:
    m["modules"]["conv"]["modules"][new] = copy.deepcopy(m["modules"]["bn"])


def _untrusted_class(m: dict[str, Any]) -> dict[str, Any]:
    # a class outside the allowlist (loads only with trust): its names meet the rule itself
    spec = m["modules"]["fc"]
    spec["class"] = "support.models:Unknown"
    return spec


def _parameter(m: dict[str, Any], new: str) -> None:
    spec = _untrusted_class(m)
    spec["parameters"][new] = spec["parameters"].pop("bias")


def _config(m: dict[str, Any], new: str) -> None:
    _untrusted_class(m)["config"][new] = 1


def _get_attr(m: dict[str, Any], new: str) -> None:
    m["attributes"][new] = m["attributes"].pop("scale")
    for node in _nodes(m, "get_attr"):
        node["target"] = new


def _placeholder(m: dict[str, Any], new: str) -> None:
    _rename_node(m, "x", new)
    for node in _nodes(m, "placeholder"):
        node["target"] = new


def _method(m: dict[str, Any], new: str) -> None:
    for node in _nodes(m, "call_method", "mean"):
        node["target"] = new


def _getattr(m: dict[str, Any], new: str) -> None:
    for node in _nodes(m, "call_function", {"function": "builtins:getattr"}):
        node["args"]["tuple"][1] = new


def _kwarg(m: dict[str, Any], new: str) -> None:
    for node in _nodes(m, "call_function", {"function": "torch.nn.functional:relu"}):
        node["kwargs"] = {"dict": [[new, False]]}


#: field -> (edit of the manifest, a plain name the edit accepts with trust)
FIELDS: dict[str, tuple[Callable[[dict[str, Any], str], None], str]] = {
    "module path": (_module_path, "conv_b"),
    "module path part": (lambda m, new: _module_path(m, f"block.{new}"), "conv_b"),
    "child module": (_child, "extra"),
    "parameter": (_parameter, "bias_b"),
    "configuration key": (_config, "setting"),
    "node name": (lambda m, new: _rename_node(m, "conv", new), "conv_b"),
    "placeholder": (_placeholder, "image"),
    "method": (_method, "amax"),
    "getattr name": (_getattr, "ndim"),
    "keyword": (_kwarg, "inplace"),
    "get_attr target": (_get_attr, "scale_b"),
    "class name": (lambda m, new: m.__setitem__("class_name", new), "Small_b"),
}


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_every_folded_character_is_refused_in_every_field(field: str) -> None:
    edit, plain = FIELDS[field]
    accepted = copy.deepcopy(_small_manifest())
    edit(accepted, plain)
    check(accepted, trust=True)  # the edit itself is sound: only the name can fail
    for c in SAMPLE:
        for bad in (f"{plain}{c}", f"{c}{plain}"):
            for trust in (False, True):
                data = copy.deepcopy(_small_manifest())
                edit(data, bad)
                with pytest.raises(LoadError):
                    check(data, trust=trust)


def test_folded_characters_are_refused_in_op_names_and_configuration_values() -> None:
    modules = Modules({}, trust=True)
    for c in SAMPLE:
        for trust in (False, True):
            with pytest.raises(LoadError):
                check_op({"op": ["aten", f"add{c}", "Tensor"]}, "target", trust=trust)
            with pytest.raises(LoadError):
                check_op({"op": [f"aten{c}", "add", "Tensor"]}, "target", trust=trust)
            enum = {"enum": {"class": "torchvision.ops.misc:Unknown", "name": f"A{c}"}}
            with pytest.raises(LoadError):
                check_value(enum, "config", tensor=modules.tensor, trust=True)
            state = {"object": {"class": "x:Unknown", "state": {f"a{c}": 1}}}
            with pytest.raises(LoadError):
                check_value(state, "config", tensor=modules.tensor, trust=True)
    assert check_op({"op": ["aten", "add", "Tensor"]}, "target", trust=False)


# --- the reported exploit ---------------------------------------------------------------------


def _chain_file(tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A saved ``Sequential(Linear(4, 4), ReLU())`` (input 2x4) with ``edit`` applied."""
    torch.manual_seed(0)
    extractor = create_feature_extractor(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), [":output"])
    return rewrite_manifest(save(extractor, tmp_path / "chain.fxtap"), edit)


EXPLOITS = {
    "fullwidth": lambda s: fullwidth_exploit(s),
    "dashed_low_line": lambda s: fullwidth_exploit(s, low_line="\ufe4d"),
    "eval": lambda s: fullwidth_exploit(s, runner="eval"),
    "to_folder": to_folder_exploit,
}


@pytest.mark.parametrize("exploit", sorted(EXPLOITS))
def test_the_reported_exploit_is_refused(exploit: str, tmp_path: Path) -> None:
    sentinel = tmp_path / "sentinel"
    path = _chain_file(tmp_path, EXPLOITS[exploit](sentinel))
    for trust in (False, True):
        with pytest.raises(LoadError, match="not a plain identifier"):
            load(path, trust=trust)
    assert not sentinel.exists()


def test_the_reported_exploit_is_refused_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sentinel = tmp_path / "sentinel"
    path = _chain_file(tmp_path, fullwidth_exploit(sentinel))
    assert main(["nodes", str(path), "--input", "2x4"]) == 1
    err = capsys.readouterr().err
    assert "not a plain identifier" in err and len(err.strip().splitlines()) == 1, err
    assert not sentinel.exists()


def test_fullwidth_names_name_the_field_at_fault(tmp_path: Path) -> None:
    path = _chain_file(tmp_path, fullwidth_exploit(tmp_path / "sentinel"))
    with pytest.raises(LoadError) as info:
        load(path)
    message = str(info.value)
    assert f"modules.{folded_dunder('class')}" in message or fullwidth("exec") in message


def test_save_refuses_a_name_load_would_refuse(tmp_path):
    """A non-ASCII module name (valid in Python) is refused at save time, not at load time."""
    from torch import nn

    import fxtap

    model = nn.Sequential()
    model.add_module("café", nn.Linear(2, 2))
    ex = fxtap.create_feature_extractor(model, ["café"])
    with pytest.raises(fxtap.InvalidArgumentError, match=r"café.*ASCII names.*fmt='pickle'"):
        fxtap.save(ex, tmp_path / "x.fxtap")
    assert not (tmp_path / "x.fxtap").exists()
    fxtap.save(ex, tmp_path / "x.pt", fmt="pickle")  # the way out the message names
    assert list(fxtap.load(tmp_path / "x.pt", trust=True)(torch.ones(1, 2))) == ["café"]


def test_root_internals_cover_every_feature_extractor_attribute():
    # The schema names FeatureExtractor's attributes without importing it (no import cycle
    # through the extractor protocol): a stored module must never shadow one of them.
    import subprocess

    from fxtap.save._schema import root_internals

    # NOTE: in a fresh interpreter: other tests of this process may set class attributes
    # (a patched GraphModule call wrapper), which no stored file can meet.
    code = "import json, fxtap.extractor as e; print(json.dumps(dir(e.FeatureExtractor)))"
    found = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert set(json.loads(found)) <= root_internals()
    assert {"graph_for", "views", "payload", "kept", "pruned_traces"} <= root_internals()
