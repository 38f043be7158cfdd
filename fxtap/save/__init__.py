"""Save and load feature extractors: a safe zip of JSON graphs and safetensors weights by default.

The default ``.fxtap`` format is a zip holding ``fxtap.json`` (both modes' graphs as node lists,
the leaf modules as class path plus plain attributes, the output keys), ``weights.safetensors``
and, for reading only, each mode's generated Python code under ``code/``. A capture extractor
(an untraceable root) is stored as its model's module tree, its requests and tracer options
(``fxtap.save._capture``), and built again on load by fxtap's capture builder. Loading runs no
code from the file: the archive is read within limits, the manifest is validated against a
strict schema (``fxtap.save._manifest``, ``fxtap.save._config``) and every function, method,
module class, enum and helper object class is matched by its exact name against the allowlist
of what this saver writes for the torchvision zoo (``fxtap.save._allowlist``) before anything is
built (``fxtap.save._safe_load``, ``fxtap.save._build``); ``fxtap.save._pack`` writes it.
Parametrized modules (``weight_norm``...) are stored as their base class and parametrizations
in both formats (``fxtap._parametrized``). The pickle format (``torch.save`` of the extractor)
keeps anything but runs code stored in the file when loaded, so ``load`` refuses it unless
``trust=True``. docs/saving.md states the threat model.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import IO, Any

import torch

from fxtap._io import write_atomic
from fxtap._protocol import Extractor, check_extractor, is_extractor
from fxtap.errors import InvalidArgumentError, LoadError, format_choices
from fxtap.save._manifest import FORMAT_NAME, FORMAT_VERSION, MANIFEST, WEIGHTS
from fxtap.save._pack import pack
from fxtap.save._schema import dotted_path

__all__ = ["FORMATS", "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST", "WEIGHTS", "load", "save"]

#: ``fmt`` values of ``save``: the safe default and the pickle that needs trust to load.
FORMATS = ("fxtap", "pickle")


def save(extractor: Extractor, path: str | os.PathLike[str], *, fmt: str = "fxtap") -> Path:
    """Write ``extractor`` to ``path``, both modes included.

    Args:
        extractor: what ``create_feature_extractor`` returned.
        path: file to write (conventionally ``NAME.fxtap``); replaced atomically.
        fmt: ``'fxtap'`` (safe: JSON graphs and safetensors weights, loads without running
            code from the file) or ``'pickle'`` (``torch.save``; keeps modules the safe format
            cannot describe, but loading runs code from the file).

    Returns:
        The path written.

    Raises:
        InvalidArgumentError: not an extractor, ``path`` not a path, an unknown ``fmt``, or a
            graph, module or tracer option the safe format cannot describe (the message
            suggests ``fmt='pickle'``).
        OutputPathError: ``path`` cannot be written.

    >>> ex = create_feature_extractor(torchvision.models.resnet18(), ["layer4"])
    >>> save(ex, tmp / "resnet18.fxtap").name
    'resnet18.fxtap'
    """
    if fmt not in FORMATS:
        raise InvalidArgumentError(f"fmt {fmt!r} is not one of {format_choices(FORMATS)}")
    check_extractor(extractor, argument="extractor")
    target = _as_path(path, "save(extractor, path)", "path='resnet18.fxtap'")
    if fmt == "pickle":
        write_atomic(target, lambda f: _pickle(extractor, f))
    else:
        _check_ascii_names(extractor)
        write_atomic(target, lambda f: pack(extractor, f))
    return target


def _check_ascii_names(extractor: Extractor) -> None:
    """Refuse, before writing, a path the safe loader would refuse (its one rule, ASCII only)."""
    items: Any = [
        *extractor.named_modules(remove_duplicate=False),
        *extractor.named_parameters(remove_duplicate=False),
        *extractor.named_buffers(remove_duplicate=False),
    ]
    for path, _ in items:
        if not path:
            continue
        try:
            dotted_path(path, f"module path {path!r}", top_level=False)
        except LoadError as exc:
            raise InvalidArgumentError(
                f"{exc}; the safe format stores only ASCII names (docs/saving.md says why): "
                "rename the module, or save with fmt='pickle' and load with trust=True"
            ) from None


def load(path: str | os.PathLike[str], *, trust: bool = False) -> Extractor:
    """Load an extractor written by ``save``, in the mode it was saved in.

    Without ``trust`` no code from the file runs, at load time or when the extractor is
    called, and reading it takes time and memory bounded by the file's size (docs/saving.md,
    "Threat model").

    Args:
        path: a ``.fxtap`` file (either format).
        trust: ``True`` allows what the safe loader refuses: a pickled extractor, whose
            loading runs arbitrary code stored in the file, and functions, methods and module
            classes outside the allowlist (importing them runs their package's code). Only
            pass ``True`` for files from a source you trust.

    Returns:
        The ``FeatureExtractor`` or ``CaptureExtractor``; its outputs equal the saved one's
        bit for bit.

    Raises:
        InvalidArgumentError: ``path`` is not a path or ``trust`` not a bool.
        LoadError: missing, truncated, corrupted, malformed or foreign file, or one that needs
            ``trust``; the message names the member and field at fault.
    """
    source = _as_path(path, "load(path)", "path='resnet18.fxtap'")
    if not isinstance(trust, bool):
        raise InvalidArgumentError(
            f"trust={trust!r} is not a bool; pass trust=True only for files from a source you "
            "trust, else leave the default trust=False"
        )
    if source.is_dir():
        raise LoadError(
            f"cannot load {str(source)!r}: it is a folder; pass path= a file written by "
            "fxtap.save(extractor, PATH)"
        )
    if not source.is_file():
        raise LoadError(
            f"cannot load {str(source)!r}: no such file. Write one with "
            "fxtap.save(extractor, PATH) or: fxtap extract MODEL --nodes NAME -o PATH"
        )
    from fxtap.save._safe_load import read_archive

    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise _corrupt(source, exc) from exc
    with archive:
        names = archive.namelist()
        if MANIFEST in names:
            try:
                return read_archive(archive, trust=trust)
            except LoadError as exc:
                detail = str(exc).rstrip(".")
                if not any(hint in detail for hint in ("trust=True", "fxtap.save(", "Upgrade")):
                    detail += (
                        ". fxtap.save does not write such files: save the extractor again with "
                        "fxtap.save(extractor, PATH)"
                    )
                raise LoadError(f"cannot load {str(source)!r}: {detail}") from exc
        if not any(n.endswith("data.pkl") for n in names):
            raise LoadError(
                f"cannot load {str(source)!r}: it is a zip file but not a saved fxtap extractor "
                f"(no {MANIFEST}). Save one with fxtap.save(extractor, PATH)"
            )
    if not trust:
        raise LoadError(
            f"cannot load {str(source)!r}: it is a pickled extractor, and unpickling runs code "
            "stored in the file, which can do anything your account can. Pass trust=True "
            "(--trust) only if you trust where the file came from, or re-save it in the safe "
            "format with fxtap.save(extractor, PATH)"
        )
    try:
        loaded = torch.load(source, weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile) as exc:
        raise _corrupt(source, exc) from exc
    if not is_extractor(loaded):
        raise LoadError(
            f"cannot load {str(source)!r}: it holds a {type(loaded).__name__}, not a fxtap "
            "extractor"
        )
    return loaded


# --- writing ---------------------------------------------------------------------------------


def _pickle(extractor: Extractor, file: IO[bytes]) -> None:
    try:
        torch.save(extractor, file)
    except (AttributeError, TypeError, RuntimeError, pickle.PicklingError) as exc:
        raise InvalidArgumentError(
            f"the extractor cannot be pickled: {exc}. Keep what it holds importable (no local "
            "functions or lambdas on its modules)"
        ) from exc


# --- reading ---------------------------------------------------------------------------------


def _as_path(path: Any, call: str, example: str) -> Path:
    if isinstance(path, (str, os.PathLike)) and not isinstance(path, bytes):
        text = os.fspath(path)
        if isinstance(text, str) and text:
            return Path(text)
    raise InvalidArgumentError(
        f"path={path!r:.60} ({type(path).__name__}) is not a file path; {call} takes a str or "
        f"os.PathLike naming a file, e.g. {example}"
    )


def _corrupt(path: Path, exc: BaseException) -> LoadError:
    return LoadError(
        f"cannot load {str(path)!r}: the file is truncated or corrupted "
        f"({type(exc).__name__}: {str(exc).strip() or 'no detail'}). Save the extractor again "
        "with fxtap.save(extractor, PATH) or: fxtap extract MODEL --nodes NAME -o PATH"
    )
