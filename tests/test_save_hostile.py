"""Hostile ``.fxtap`` files: none runs code, none takes long or much memory, each is refused.

``hostile_files`` writes one file per attack, several variants of each family the safe loader
must withstand: code pasted into generated Python (placeholder targets, node names, method and
module names with quotes, keyword-argument names), dotted walks through allowed modules,
dunder access, attribute names computed at run time, module configurations shadowing
``nn.Module`` internals, self-referential module specs, zip and JSON bombs, malformed graphs,
foreign tensors and pickles; names with characters Python folds into ASCII (NFKC) in every
field that becomes a name, compatibility forms of dunders, ``to_folder``, ``exec`` and ``eval``
(the fullwidth ``self.__class__.__init__.__globals__`` walk to ``exec``), and backward ATen ops
that crash on hostile indices. Every payload would create its own sentinel file.

One subprocess loads every file in turn (so a payload that ran cannot hide in the test's own
process), times each, resets and reads its peak RSS (``/proc/self/clear_refs``) and Python's
peak allocation (``tracemalloc``), and calls each extractor that loaded. Each file must be
refused with ``LoadError`` or load harmlessly and return the original's values; no sentinel
may appear; no file may take more than 5 s or grow peak memory by more than 300 MB.
"""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fxtap import create_feature_extractor  # noqa: E402
from fxtap.save import MANIFEST, WEIGHTS, save  # noqa: E402
from support.saving import (  # noqa: E402
    Small,
    folded_dunder,
    fullwidth,
    fullwidth_exploit,
    relu_module,
    to_folder_exploit,
)

MAX_SECONDS = 5.0
MAX_GROWTH = 300 << 20


def example() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


# --- writing hostile files -------------------------------------------------------------------


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {n: archive.read(n) for n in archive.namelist()}


def _write(path: Path, members: dict[str, bytes], compress: int = zipfile.ZIP_DEFLATED) -> None:
    with zipfile.ZipFile(path, "w", compression=compress) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _payload(sentinel: Path) -> str:
    return f"__import__('os').system('touch {sentinel}')"


def _node(manifest: dict[str, Any], op: str, mode: str = "eval") -> dict[str, Any]:
    return next(n for n in manifest["graphs"][mode] if n["op"] == op)


def _function_node(manifest: dict[str, Any], function: str, mode: str = "eval") -> dict[str, Any]:
    return next(
        n
        for n in manifest["graphs"][mode]
        if n["op"] == "call_function" and n["target"]["function"] == function
    )


def manifest_edits(s: Path) -> Iterator[tuple[str, Callable[[dict[str, Any]], None]]]:
    """(name, edit of the manifest) for each attack on the JSON; ``s`` is the sentinel."""
    code = _payload(s)
    yield from _code_edits(code)
    yield from _call_edits(code)
    yield from _spec_edits(code, s)


Edit = Callable[[dict[str, Any]], None]


def each_mode(fn: Callable[[dict[str, Any], str], None]) -> Edit:
    return lambda m: [fn(m, mode) for mode in ("train", "eval")]  # type: ignore[func-returns-value]


def _code_edits(code: str) -> Iterator[tuple[str, Edit]]:
    """Code pasted into generated Python: names, targets and keys that would run ``code``."""

    def set_placeholder(value: str) -> Edit:
        return each_mode(lambda m, mode: _node(m, "placeholder", mode).__setitem__("target", value))

    # code pasted into generated Python
    yield "placeholder_default", set_placeholder(f"x={code}")
    yield "placeholder_annotation", set_placeholder(f"x: {code}")
    yield "placeholder_second_arg", set_placeholder(f"x, y={code}")
    yield "placeholder_varargs", set_placeholder("*args")
    yield "placeholder_keyword", set_placeholder("lambda")
    yield (
        "placeholder_default_value",
        each_mode(
            lambda m, mode: _node(m, "placeholder", mode).__setitem__(
                "args", {"tuple": [{"function": "builtins:eval"}]}
            )
        ),
    )

    def rename_first(value: str) -> Callable[[dict[str, Any]], None]:
        def edit(m: dict[str, Any]) -> None:
            for mode in ("train", "eval"):
                node = _node(m, "call_module", mode)
                old = node["name"]
                node["name"] = value
                for other in m["graphs"][mode]:
                    text = json.dumps(other["args"]).replace(
                        json.dumps({"node": old}), json.dumps({"node": value})
                    )
                    other["args"] = json.loads(text)

        return edit

    yield "node_name_code", rename_first(f"y = {code}; z")
    yield "node_name_dunder", rename_first("__builtins__")
    yield "node_name_self", rename_first("self")
    yield "node_name_builtin", rename_first("getattr")
    quote = f'size"); {code}; getattr(x, "size'
    yield (
        "method_quote",
        each_mode(lambda m, mode: _node(m, "call_method", mode).__setitem__("target", quote)),
    )

    def module_key(m: dict[str, Any]) -> None:
        evil = f'conv"); {code}; ("'
        m["modules"][evil] = m["modules"].pop("conv")
        for mode in ("train", "eval"):
            _node(m, "call_module", mode)["target"] = evil

    yield "module_key_quote", module_key
    yield (
        "get_attr_quote",
        each_mode(
            lambda m, mode: _node(m, "get_attr", mode).__setitem__("target", f'scale"); {code}; ("')
        ),
    )
    yield (
        "kwarg_name_code",
        each_mode(
            lambda m, mode: _node(m, "call_module", mode).__setitem__(
                "kwargs", {"dict": [[f"x=0, **{{}}) or {code} or dict(", 1]]}
            )
        ),
    )
    yield "class_name_code", lambda m: m.__setitem__("class_name", f"A(object): pass\n{code}\n#")
    yield (
        "output_key_code",
        each_mode(
            lambda m, mode: m["graphs"][mode][-1]["args"]["tuple"][0]["dict"][0].__setitem__(
                0, f"'{code}'"
            )
        ),
    )


def _call_edits(code: str) -> Iterator[tuple[str, Edit]]:
    """Dotted walks, functions outside the allowlist, dunder access and computed names."""
    # dotted walks and functions outside the allowlist
    for name, function in [
        ("walk_os_system", "torch:os.system"),
        ("walk_serialization_load", "torch:serialization.load"),
        ("walk_hub_load", "torch:hub.load"),
        ("walk_functional_torch", "torch.nn.functional:torch.load"),
        ("walk_operator_attr", "operator:getitem.__self__"),
        ("builtins_eval", "builtins:eval"),
        ("builtins_exec", "builtins:exec"),
        ("builtins_import", "builtins:__import__"),
        ("os_system", "os:system"),
        ("subprocess_call", "subprocess:call"),
        ("torch_load", "torch:load"),
        ("operator_attrgetter", "operator:attrgetter"),
        ("operator_methodcaller", "operator:methodcaller"),
        ("torch_from_file", "torch:from_file"),
    ]:
        yield (
            name,
            each_mode(
                lambda m, mode, f=function: _function_node(m, "operator:mul", mode).__setitem__(
                    "target", {"function": f}
                )
            ),
        )

    # dunder access and computed attribute names
    for method in ("__call__", "__reduce_ex__", "__init__", "_apply", "register_forward_hook"):
        yield (
            f"method_{method.strip('_')}",
            each_mode(
                lambda m, mode, name=method: _node(m, "call_method", mode).__setitem__(
                    "target", name
                )
            ),
        )
    for attribute in ("__class__", "__globals__", "_modules", "T", "__dict__"):
        yield (
            f"getattr_{attribute.strip('_')}",
            each_mode(
                lambda m, mode, a=attribute: _function_node(m, "builtins:getattr", mode)["args"][
                    "tuple"
                ].__setitem__(1, a)
            ),
        )

    def computed_getattr(m: dict[str, Any]) -> None:
        for mode in ("train", "eval"):
            nodes = m["graphs"][mode]
            at = nodes.index(_function_node(m, "builtins:getattr", mode))
            parts = {"tuple": ["__cla", "ss__"]}
            nodes.insert(
                at,
                {"name": "attr", "op": "call_function", "target": {"function": "operator:add"},
                 "args": parts, "kwargs": {"dict": []}},
            )  # fmt: skip
            nodes[at + 1]["args"]["tuple"][1] = {"node": "attr"}

    yield "getattr_computed", computed_getattr
    yield (
        "getattr_three_args",
        each_mode(
            lambda m, mode: _function_node(m, "builtins:getattr", mode)["args"]["tuple"].append(0)
        ),
    )


def _spec_edits(code: str, s: Path) -> Iterator[tuple[str, Edit]]:
    """Module configurations and classes, self-referential specs, malformed graphs and more."""
    # module configurations and classes
    for key, value in [
        ("forward", 0),
        ("_forward_hooks", {"dict": [[0, 1]]}),
        ("_parameters", {"dict": []}),
        ("training", "yes"),
        ("__class__", "x"),
        ("__dict__", {"dict": []}),
        ("weight", 1.0),
        ("unknown_setting", 1),
    ]:
        yield (
            f"config_{key.strip('_')}",
            lambda m, k=key, v=value: m["modules"]["conv"]["config"].__setitem__(k, v),
        )
    yield "config_missing", lambda m: m["modules"]["conv"]["config"].pop("stride")
    for name, cls in [
        ("class_popen", "subprocess:Popen"),
        ("class_walk", "torch.nn:modules.conv.Conv2d"),
        ("class_module", "torch.nn.modules.module:Module"),
        ("class_hub", "torch:hub"),
        ("class_object", "builtins:object"),
    ]:
        yield name, lambda m, c=cls: m["modules"]["conv"].__setitem__("class", c)
    yield (
        "tensor_name_shadow",
        lambda m: m["modules"]["fc"]["parameters"].__setitem__(
            "_buffers", m["modules"]["fc"]["parameters"].pop("bias")
        ),
    )
    yield (
        "child_shadow",
        lambda m: m["modules"]["fc"]["modules"].__setitem__("forward", m["modules"]["bn"]),
    )
    yield "path_shadow_root", lambda m: m["modules"].__setitem__("graph", m["modules"]["bn"])
    yield "path_space", lambda m: m["modules"].__setitem__("b n", m["modules"]["bn"])
    yield "path_backslash", lambda m: m["modules"].__setitem__("bn\\\\", m["modules"]["bn"])

    # self-referential and dangling module specs
    yield (
        "same_as_self",
        lambda m: m["modules"]["fc"]["modules"].__setitem__("loop", {"same_as": "fc"}),
    )
    yield (
        "same_as_later",
        lambda m: m["modules"]["conv"]["modules"].__setitem__("next", {"same_as": "fc"}),
    )
    yield "same_as_missing", lambda m: m["modules"].__setitem__("bn", {"same_as": "nowhere"})

    def deep_same_as(m: dict[str, Any]) -> None:
        spec = m["modules"]["fc"]
        for i in range(30):
            child = copy.deepcopy(m["modules"]["bn"])
            child["modules"] = {}
            spec["modules"][f"m{i}"] = child
            spec = child
        spec["modules"]["back"] = {"same_as": "fc"}

    yield "same_as_deep_ancestor", deep_same_as

    # malformed graphs
    def duplicate_name(m: dict[str, Any]) -> None:
        for mode in ("train", "eval"):
            nodes = m["graphs"][mode]
            nodes[2]["name"] = nodes[1]["name"]

    yield "duplicate_names", duplicate_name
    yield "no_output", each_mode(lambda m, mode: m["graphs"][mode].pop())
    yield (
        "two_outputs",
        each_mode(lambda m, mode: m["graphs"][mode].append(copy.deepcopy(m["graphs"][mode][-1]))),
    )
    yield (
        "output_first",
        each_mode(lambda m, mode: m["graphs"][mode].insert(0, m["graphs"][mode].pop())),
    )
    yield (
        "forward_reference",
        each_mode(lambda m, mode: m["graphs"][mode].insert(1, m["graphs"][mode].pop(3))),
    )
    yield "unknown_op", each_mode(lambda m, mode: _node(m, "call_method", mode).update(op="exec"))
    yield (
        "unknown_tag",
        each_mode(lambda m, mode: _node(m, "call_method", mode).update(args={"code": code})),
    )
    yield (
        "dtype_code",
        each_mode(
            lambda m, mode: _node(m, "call_method", mode)["args"]["tuple"].append({"dtype": code})
        ),
    )
    yield (
        "device_code",
        each_mode(
            lambda m, mode: _node(m, "call_method", mode)["args"]["tuple"].append({"device": code})
        ),
    )
    yield "trust_in_file", lambda m: m.__setitem__("trust", True)
    yield "wrong_version", lambda m: m.__setitem__("version", 99)
    yield (
        "tensor_missing",
        lambda m: (
            m["tensors"].__setitem__("t999", {"parameter": True, "requires_grad": True})
            or m["modules"]["fc"]["parameters"].__setitem__("bias", "t999")
        ),
    )
    yield (
        "int_requires_grad",
        lambda m: m["tensors"][m["modules"]["bn"]["buffers"]["num_batches_tracked"]].update(
            parameter=True, requires_grad=True
        ),
    )

    # names that Python folds with NFKC into ASCII when it compiles code, in every field that
    # becomes a name (fullwidth, mathematical, ligature, superscript and other forms)
    for name, edit in nfkc_edits(code):
        yield name, edit
    for name, edit in compat_edits(s):
        yield name, edit

    # ATen ops that trust their arguments (raw indices): left out of the allowlist
    for op, args in [
        ("max_pool2d_with_indices_backward", ["default"]),
        ("embedding_dense_backward", ["default"]),
    ]:
        yield (
            f"op_{op}",
            each_mode(
                lambda m, mode, o=op, a=args: _function_node(m, "operator:mul", mode).__setitem__(
                    "target", {"op": ["aten", o, *a]}
                )
            ),
        )

    # harmless: data the loader keeps as data
    yield (
        "harmless_fxtap_name",
        each_mode(lambda m, mode: _node(m, "call_module", mode).__setitem__("fxtap_name", code)),
    )
    yield "harmless_torch_version", lambda m: m.__setitem__("torch", code)
    yield "harmless_kept", lambda m: m["kept"].__setitem__("eval", [code])


#: Characters NFKC folds into ASCII name characters, one of each kind: fullwidth, mathematical
#: bold, a ligature, a superscript, a subscript digit, a presentation-form low line.
NFKC_SAMPLES = ("\uff45", "\U0001d41e", "\ufb01", "\u1d49", "\u2080", "\ufe4d")


def nfkc_edits(code: str) -> Iterator[tuple[str, Callable[[dict[str, Any]], None]]]:
    """A folded character in each field that becomes a name: module paths, child modules,
    tensors, configuration keys, nodes, placeholders, methods, attributes, keywords, class."""

    def both(fn: Callable[[dict[str, Any], str], None]) -> Callable[[dict[str, Any]], None]:
        return lambda m: [fn(m, mode) for mode in ("train", "eval")]  # type: ignore[func-returns-value]

    for i, c in enumerate(NFKC_SAMPLES):
        bad = f"conv{c}"

        def module_path(m: dict[str, Any], bad: str = bad) -> None:
            m["modules"][bad] = m["modules"].pop("conv")
            for mode in ("train", "eval"):
                _node(m, "call_module", mode)["target"] = bad

        def node_name(m: dict[str, Any], bad: str = bad) -> None:
            for mode in ("train", "eval"):
                text = json.dumps(m["graphs"][mode])
                text = text.replace('"name": "conv"', f'"name": {json.dumps(bad)}')
                text = text.replace('{"node": "conv"}', f'{{"node": {json.dumps(bad)}}}')
                m["graphs"][mode] = json.loads(text)

        yield f"nfkc_module_path_{i}", module_path
        yield f"nfkc_node_name_{i}", node_name
        yield (
            f"nfkc_child_{i}",
            lambda m, b=bad: m["modules"]["conv"]["modules"].__setitem__(b, relu_module()),
        )
        yield (
            f"nfkc_parameter_{i}",
            lambda m, b=bad: m["modules"]["fc"]["parameters"].__setitem__(
                b, m["modules"]["fc"]["parameters"].pop("bias")
            ),
        )
        yield (
            f"nfkc_config_{i}",
            lambda m, b=bad: m["modules"]["conv"]["config"].__setitem__(b, 1),
        )
        yield (
            f"nfkc_placeholder_{i}",
            both(lambda m, mode, b=bad: _node(m, "placeholder", mode).__setitem__("target", b)),
        )
        yield (
            f"nfkc_method_{i}",
            both(
                lambda m, mode, b=f"mean{c}": _node(m, "call_method", mode).__setitem__("target", b)
            ),
        )
        yield (
            f"nfkc_getattr_{i}",
            both(
                lambda m, mode, b=f"shape{c}": _function_node(m, "builtins:getattr", mode)["args"][
                    "tuple"
                ].__setitem__(1, b)
            ),
        )
        yield (
            f"nfkc_kwarg_{i}",
            both(
                lambda m, mode, b=f"inplace{c}": _function_node(
                    m, "torch.nn.functional:relu", mode
                ).__setitem__("kwargs", {"dict": [[b, False]]})
            ),
        )

        def get_attr(m: dict[str, Any], bad: str = f"scale{c}") -> None:
            m["attributes"][bad] = m["attributes"].pop("scale")
            for mode in ("train", "eval"):
                _node(m, "get_attr", mode)["target"] = bad

        yield f"nfkc_get_attr_{i}", get_attr
        yield f"nfkc_class_name_{i}", lambda m, b=f"Small{c}": m.__setitem__("class_name", b)


def compat_edits(s: Path) -> Iterator[tuple[str, Callable[[dict[str, Any]], None]]]:
    """Compatibility forms of dunders, ``to_folder``, ``exec`` and ``eval``: the exploit and
    its variants (each would create the sentinel)."""
    yield "compat_fullwidth_exploit", fullwidth_exploit(s)
    yield "compat_dashed_low_line_exploit", fullwidth_exploit(s, low_line="\ufe4d")
    yield "compat_vertical_low_line_exploit", fullwidth_exploit(s, low_line="\ufe33")
    yield "compat_eval_exploit", fullwidth_exploit(s, runner="eval")
    yield "compat_to_folder", to_folder_exploit(s)

    def dunder_path(word: str) -> Callable[[dict[str, Any]], None]:
        def edit(m: dict[str, Any]) -> None:
            bad = folded_dunder(word)
            m["modules"][bad] = m["modules"].pop("conv")
            for mode in ("train", "eval"):
                _node(m, "call_module", mode)["target"] = bad

        return edit

    for word in ("class", "globals", "builtins", "dict", "init", "reduce_ex"):
        yield f"compat_dunder_{word}", dunder_path(word)
    for word in ("exec", "eval", "to_folder", "forward", "compile"):
        yield (
            f"compat_method_{word}",
            lambda m, w=word: [
                _node(m, "call_method", mode).__setitem__("target", fullwidth(w))
                for mode in ("train", "eval")
            ],
        )


def archive_attacks(
    s: Path, pristine: dict[str, bytes]
) -> Iterator[tuple[str, Callable[[Path], None]]]:
    """(name, writer) for each attack on the archive itself."""
    code = _payload(s)

    def bomb(member: str, size: int) -> Callable[[Path], None]:
        def write(path: Path) -> None:
            members = {k: v for k, v in pristine.items() if k != member}
            _write(path, members)
            chunk = b"0" * (1 << 20)
            with (
                zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z,
                z.open(member, "w", force_zip64=True) as f,
            ):
                for _ in range(size >> 20):
                    f.write(chunk)

        return write

    yield "bomb_manifest_1gib", bomb(MANIFEST, 1 << 30)
    yield "bomb_weights_64mib", bomb(WEIGHTS, 64 << 20)

    def lying_size(path: Path) -> None:
        members = dict(pristine)
        members[MANIFEST] = members[MANIFEST] + b" " * (64 << 20)
        _write(path, members)
        _patch_declared_size(path, MANIFEST, len(pristine[MANIFEST]) + 10)

    yield "bomb_lying_size", lying_size

    def json_bomb(text: bytes) -> Callable[[Path], None]:
        return lambda path: _write(path, {**pristine, MANIFEST: text})

    yield "json_deep", json_bomb(b"[" * 100_000 + b"]" * 100_000)
    yield "json_deep_objects", json_bomb(b'{"a":' * 5000 + b"1" + b"}" * 5000)
    yield "json_wide", json_bomb(b"[" + b"0," * 5_000_000 + b"0]")
    yield "json_big_int", json_bomb(b'{"format": ' + b"9" * 100_000 + b"}")
    yield "json_not_utf8", json_bomb(b"\xff\xfe{}")
    yield "json_not_object", json_bomb(b"[1, 2, 3]")

    def duplicate_member(path: Path) -> None:
        _write(path, pristine)
        with zipfile.ZipFile(path, "a") as archive, pytest.warns(UserWarning):
            archive.writestr(MANIFEST, b"{}")

    yield "duplicate_manifest", duplicate_member

    def weights(data: bytes) -> Callable[[Path], None]:
        return lambda path: _write(path, {**pristine, WEIGHTS: data})

    header = json.dumps({"t0": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4]}})
    yield (
        "safetensors_huge_shape",
        weights(struct.pack("<Q", len(header)) + header.encode() + b"0000"),
    )
    yield "safetensors_huge_header", weights(struct.pack("<Q", 1 << 60) + b"{}")
    yield "safetensors_garbage", weights(b"not tensors at all")

    def pickled(**save_options: Any) -> Callable[[Path], None]:
        """A file ``torch.save(..., **save_options)`` writes, whose unpickling runs a command."""

        def write(path: Path) -> None:
            class Evil:
                def __reduce__(self) -> tuple[Any, ...]:
                    return (os.system, (f"touch {s}",))

            buffer = io.BytesIO()
            torch.save({"x": Evil()}, buffer, **save_options)
            path.write_bytes(buffer.getvalue())

        return write

    pickle_payload = pickled(pickle_module=pickle)
    yield "pickle_payload", pickle_payload
    yield "pickle_legacy", pickled(_use_new_zipfile_serialization=False)

    def pickle_in_zip(path: Path) -> None:
        pickle_payload(path)
        _write(path, {"archive/data.pkl": path.read_bytes(), "fxtap.json.pkl": b""})

    yield "pickle_in_zip", pickle_in_zip
    yield (
        "harmless_code_member",
        lambda path: _write(
            path, {**pristine, "code/eval.py": code.encode(), "evil.py": code.encode()}
        ),
    )


def _patch_declared_size(path: Path, member: str, size: int) -> None:
    """Overwrite ``member``'s uncompressed size in its local header and directory entry."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = 0
        while (at := data.find(signature, at)) >= 0:
            start = at + (30 if signature == b"PK\x03\x04" else 46)
            if data[start : start + len(name)] == name:
                struct.pack_into("<I", data, at + offset, size)
            at += 4
    path.write_bytes(bytes(data))


def hostile_files(folder: Path) -> list[tuple[Path, Path]]:
    """Write the pristine file and every hostile one; (file, its sentinel) pairs."""
    torch.manual_seed(0)
    extractor = create_feature_extractor(Small(), [":output", "bn"])
    pristine_path = save(extractor, folder / "pristine.fxtap")
    pristine = _members(pristine_path)
    files = []
    sentinels = folder / "sentinels"
    sentinels.mkdir()
    for name, edit in manifest_edits(sentinels / "PLACEHOLDER"):
        sentinel = sentinels / name
        manifest = json.loads(pristine[MANIFEST])
        edit(manifest)
        text = json.dumps(manifest).replace(str(sentinels / "PLACEHOLDER"), str(sentinel))
        path = folder / f"{name}.fxtap"
        _write(path, {**pristine, MANIFEST: text.encode()})
        files.append((path, sentinel))
    for name, writer in archive_attacks(sentinels / "PLACEHOLDER", pristine):
        sentinel = sentinels / name
        path = folder / f"{name}.fxtap"
        writer(path)
        data = path.read_bytes().replace(
            str(sentinels / "PLACEHOLDER").encode(), str(sentinel).encode()
        )
        path.write_bytes(data)
        files.append((path, sentinel))
    return files


# --- the child process -----------------------------------------------------------------------


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(paths: list[str]) -> None:
    """Load ``paths[0]`` (the pristine file), then every other file; one JSON line each."""
    import signal

    from fxtap.errors import LoadError
    from fxtap.save import load

    torch.set_num_threads(1)

    def alarm(*_: Any) -> None:
        raise TimeoutError("took too long")

    signal.signal(signal.SIGALRM, alarm)
    expected = None
    tracemalloc.start()
    for path in paths:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (VmHWM)
        tracemalloc.reset_peak()
        before = _rss("VmRSS")
        start = time.perf_counter()
        result: dict[str, Any] = {"file": Path(path).name}
        signal.alarm(int(MAX_SECONDS) * 2)
        try:
            loaded = load(path)
        except LoadError as exc:
            result["outcome"] = "refused"
            result["error"] = str(exc)[:300]
        except BaseException as exc:
            result["outcome"] = f"{type(exc).__name__}: {exc}"[:300]
        else:
            result["outcome"] = "loaded"
            try:
                loaded.eval()
                with torch.no_grad():
                    values = [v.clone() for v in loaded(example()).values()]
                if expected is None:
                    expected = values
                same = len(values) == len(expected)
                same = same and all(torch.equal(a, b) for a, b in zip(values, expected))
                result["call"] = "same" if same else "different values"
            except BaseException as exc:
                result["call"] = f"{type(exc).__name__}: {exc}"[:300]
        signal.alarm(0)
        result["seconds"] = time.perf_counter() - start
        result["growth"] = max(_rss("VmHWM") - before, tracemalloc.get_traced_memory()[1])
        print(json.dumps(result), flush=True)


# --- the test --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[tuple[Path, Path]], list[dict[str, Any]]]:
    folder = tmp_path_factory.mktemp("hostile")
    files = hostile_files(folder)
    paths = [str(folder / "pristine.fxtap"), *(str(p) for p, _ in files)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, __file__, *paths],
        capture_output=True,
        text=True,
        env=env,
        timeout=30 + MAX_SECONDS * len(paths),
        check=False,
    )
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    print("\n".join(f"{x['seconds']:.3f}s {x['growth'] >> 20}MB {x['file']}" for x in lines))
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(lines) == len(paths), run.stderr[-3000:]
    return files, lines


def test_at_least_40_hostile_files_in_every_family(report) -> None:
    files, _ = report
    names = [p.stem for p, _ in files]
    assert len(names) >= 40
    for family in ("placeholder", "node_name", "walk", "method", "getattr", "config",
                   "class", "same_as", "bomb", "json", "safetensors", "pickle", "harmless",
                   "nfkc", "compat", "op"):  # fmt: skip
        assert sum(n.startswith(family) for n in names) >= 2, family


def test_pristine_file_loads_and_computes(report) -> None:
    _, lines = report
    assert lines[0]["outcome"] == "loaded" and lines[0]["call"] == "same"


def test_every_hostile_file_is_refused_or_harmless(report) -> None:
    files, lines = report
    for (path, sentinel), line in zip(files, lines[1:]):
        assert not sentinel.exists(), f"{path.name}: its payload ran"
        if path.stem.startswith("harmless"):
            assert line["outcome"] == "loaded", line
            assert line["call"] == "same", line
        else:
            assert line["outcome"] == "refused", line
    assert not list(files[0][1].parent.iterdir()), "a sentinel exists"


def test_no_file_takes_long_or_much_memory(report) -> None:
    _, lines = report
    for line in lines:
        assert line["seconds"] < MAX_SECONDS, line
        assert line["growth"] < MAX_GROWTH, line


def test_refusals_name_the_field_at_fault(report) -> None:
    files, lines = report
    by_name = {p.stem: line for (p, _), line in zip(files, lines[1:])}
    assert "graphs.train[0].target" in by_name["placeholder_default"]["error"]
    assert "'torch:os.system'" in by_name["walk_os_system"]["error"]
    assert "modules.conv.config.forward" in by_name["config_forward"]["error"]
    assert "same_as" in by_name["same_as_self"]["error"]
    assert "fxtap.json" in by_name["bomb_manifest_1gib"]["error"]
    assert "pickled" in by_name["pickle_payload"]["error"]


if __name__ == "__main__":
    child(sys.argv[1:])
