"""Shared pieces of the ``.fxtap`` file tests: a small model with every op kind, manifest
rewriting, and hostile manifest edits (fullwidth names that NFKC folds into dunders)."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fxtap.save import MANIFEST


def rewrite_manifest(
    source: Path, edit: Callable[[dict[str, Any]], None], target: Path | None = None
) -> Path:
    """Apply ``edit`` to the manifest of the saved file ``source``; write to ``target`` (default:
    ``source`` itself) and return the path written."""
    with zipfile.ZipFile(source) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    manifest = json.loads(members[MANIFEST])
    edit(manifest)
    members[MANIFEST] = json.dumps(manifest).encode()
    target = source if target is None else target
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


class Small(nn.Module):
    """Every op kind the saver writes: modules, a root parameter, functions, methods, getattr."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.scale = nn.Parameter(torch.full((1,), 1.5))
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.conv(x))) * self.scale
        z = y.mean((2, 3)).view(y.shape[0], -1)
        return self.fc(z) + 1


def json_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path (keys and list indices) of every value inside the JSON value ``value``, its own
    (``prefix``) first."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += json_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += json_paths(item, (*prefix, i))
    return found


def fullwidth(text: str) -> str:
    """``text`` with its ASCII letters, digits and ``_`` in fullwidth forms (NFKC folds them)."""
    return "".join(
        chr(ord(c) + 0xFEE0) if c.isascii() and (c.isalnum() or c == "_") else c for c in text
    )


def folded_dunder(word: str, low_line: str = "\uff3f") -> str:
    """A dunder name that compiles as ``__word__`` but passes ``startswith('__')`` checks."""
    return f"_{low_line}{word}{low_line}{low_line}"


def relu_module() -> dict[str, Any]:
    return {"class": "torch.nn.modules.activation:ReLU", "training": False,
            "config": {"inplace": False}, "parameters": {}, "buffers": {},
            "non_persistent": [], "modules": {}}  # fmt: skip


def _graph_node(name: str, op: str, target: Any, args: list[Any]) -> dict[str, Any]:
    return {"name": name, "op": op, "target": target, "args": {"tuple": args},
            "kwargs": {"dict": []}}  # fmt: skip


def fullwidth_exploit(
    sentinel: Path, low_line: str = "\uff3f", runner: str = "exec"
) -> Callable[[dict[str, Any]], None]:
    """The reported exploit: module paths that compile as ``self.__class__.__init__.__globals__``
    reach ``exec`` (by ``operator.getitem``), store it under a folded name, and call it."""
    cls, init, glb = (folded_dunder(w, low_line) for w in ("class", "init", "globals"))
    dct, setitem = folded_dunder("dict", low_line), folded_dunder("setitem", low_line)
    stored = fullwidth(runner)
    command = f"__import__('os').system('touch {sentinel}')"
    source = f"exec({command!r})" if runner == "eval" else command

    def edit(m: dict[str, Any]) -> None:
        m["modules"][f"{cls}.{init}.{glb}.get"] = relu_module()
        m["modules"][f"{dct}.{setitem}"] = relu_module()
        m["modules"][stored] = relu_module()
        for mode in ("train", "eval"):
            nodes = m["graphs"][mode]
            nodes[-1:-1] = [
                _graph_node("b", "call_module", f"{cls}.{init}.{glb}.get", ["__builtins__"]),
                _graph_node("e", "call_function", {"function": "operator:getitem"},
                            [{"node": "b"}, runner]),
                _graph_node("s", "call_module", f"{dct}.{setitem}", [runner, {"node": "e"}]),
                _graph_node("r", "call_module", stored, [source]),
            ]  # fmt: skip

    return edit


def to_folder_exploit(folder: Path) -> Callable[[dict[str, Any]], None]:
    """``self.to_folder(PATH)`` written in fullwidth: would write a package the next import runs."""

    def edit(m: dict[str, Any]) -> None:
        m["modules"][fullwidth("to_folder")] = relu_module()
        for mode in ("train", "eval"):
            m["graphs"][mode][-1:-1] = [
                _graph_node("w", "call_module", fullwidth("to_folder"), [str(folder), "Evil"])
            ]

    return edit
