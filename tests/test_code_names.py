"""Names torch.fx cannot write into generated code are refused at trace time (trace/_code_names).

torch.fx pastes a non-identifier module name between quotes, unescaped, and writes identifiers
as attribute accesses that Python folds with NFKC. Each such name used to give a raw
``SyntaxError``, a module that does not exist, or another module's values; now it is an
``InvalidArgumentError`` naming the module path, from every door that generates code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import fxtap
from fxtap import InvalidArgumentError
from fxtap.cli import main
from support.checker import bitwise_equal

#: name -> what the message says about it.
BAD = {
    "a\nb": "it holds '\\n'",
    "a\rb": "it holds '\\r'",
    "a\\b": "it holds '\\\\'",
    "a\x00b": "it holds '\\x00'",
    'a"b': "it holds '\"'",
    "a\u2028b": "it holds '\\u2028'",  # a line separator: not printable
    "class": "is a Python keyword",
    "ｆｃ": "Python reads 'ｆｃ' as 'fc' (NFKC)",  # fullwidth letters
    "\ufb01x": "as 'fix' (NFKC)",  # the ligature fi
    "\U0001d41f\U0001d41c": "as 'fc' (NFKC)",  # mathematical bold letters
}


def _nested(name: str) -> nn.Module:
    block = nn.Sequential()
    block.add_module(name, nn.Linear(2, 2))
    block.add_module("fc", nn.Linear(2, 2))  # what a folded or mis-escaped name could reach
    return nn.Sequential(nn.Identity(), block)


@pytest.mark.parametrize("name", list(BAD), ids=[ascii(n) for n in BAD])
@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_unwritable_module_names_are_refused_naming_the_path(name, tracer, tmp_path):
    model = _nested(name)
    example = torch.randn(2, 2)
    path = re.escape(repr(f"1.{name}" if tracer == "fx" else f"1.{name}.weight"))
    doors = {
        "create_feature_extractor": lambda: fxtap.create_feature_extractor(
            model, ["1"], tracer=tracer, example_inputs=example
        ),
        "render": lambda: fxtap.render(
            model, fmt="dot", out_dir=tmp_path, tracer=tracer, example_inputs=example
        ),
        "node_table": lambda: fxtap.node_table(model, tracer=tracer, example_inputs=example),
    }
    for door, call in doors.items():
        with pytest.raises(InvalidArgumentError, match=path) as info:
            call()
        message = str(info.value)
        assert BAD[name] in message and "Rename it in the model" in message, (door, message)
    assert list(tmp_path.iterdir()) == []


def test_an_escape_in_a_name_would_have_run_another_module():
    # '"a\\x62"' in generated code reads as "ab": the wrong module, silently
    model = nn.Sequential()
    model.add_module("a\\x62", nn.Linear(2, 2))
    model.add_module("ab", nn.Linear(2, 2))
    with pytest.raises(InvalidArgumentError, match=re.escape(repr("a\\x62"))):
        fxtap.create_feature_extractor(model, ["ab"])


class Weighted(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.register_parameter(name, nn.Parameter(torch.ones(2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * getattr(self, self.name)


def test_an_unwritable_parameter_name_is_refused_as_an_attribute():
    with pytest.raises(InvalidArgumentError, match=r"attribute 'w\\n' of Weighted"):
        fxtap.create_feature_extractor(Weighted("w\n"), [":output"], tracer="fx")


@pytest.mark.parametrize("name", ["a b", "<!--<script>", "0", "é", "naïve", "_x", "_"])
def test_names_torch_fx_writes_faithfully_still_work(name):
    model = _nested(name)
    x = torch.randn(2, 2)
    ex = fxtap.create_feature_extractor(model, {f"1.{name}": "out"})
    assert bitwise_equal(ex(x)["out"], getattr(model[1], name)(x))


FACTORY = """
from torch import nn


def build():
    block = nn.Sequential()
    block.add_module('a"b', nn.Linear(2, 2))
    return nn.Sequential(nn.Identity(), block)
"""


def test_the_command_line_says_it_in_one_line(tmp_path: Path, capsys):
    (tmp_path / "factory.py").write_text(FACTORY)
    spec = f"{tmp_path / 'factory.py'}:build"
    out = tmp_path / "x.fxtap"
    for argv in (
        ["extract", spec, "--nodes", "1", "--input", "2x2", "-o", str(out)],
        ["render", spec, "--format", "dot", "-o", str(tmp_path / "drawings")],
    ):
        assert main(argv) == 1
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(errors) == 1 and "module path '1.a\"b' of Sequential" in errors[0], errors
        assert "SyntaxError" not in errors[0]
    assert not out.exists()
