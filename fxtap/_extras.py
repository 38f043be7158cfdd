"""Optional extras: which packages each needs, and one typed error before any work starts."""

from __future__ import annotations

import importlib.util

from fxtap.errors import MissingExtraError

__all__ = ["EXTRAS", "require_extra"]

# Each user extra of pyproject.toml and the import names its code needs. A test keeps this
# table and pyproject.toml's [project.optional-dependencies] in step.
EXTRAS: dict[str, dict[str, str]] = {
    # extra: {import name: distribution name}
    "dataset": {"zarr": "zarr", "tqdm": "tqdm", "PIL": "pillow"},
    "plot": {"matplotlib": "matplotlib"},
    "hf": {"transformers": "transformers"},
    "timm": {"timm": "timm"},
}


def require_extra(extra: str, *, purpose: str) -> None:
    """Raise ``MissingExtraError`` unless every package of ``extra`` can be imported.

    Call it at the door of the feature, before any model is built or any data is read, so that a
    missing package costs the user nothing.

    Args:
        extra: a key of ``EXTRAS``.
        purpose: what needs it, in the words of the interface used (``"fxtap run"``,
            ``"extract_dataset()"``, ``"--plot"``).

    Raises:
        MissingExtraError: naming the missing packages and the install command.
    """
    missing = [dist for name, dist in EXTRAS[extra].items() if not _importable(name)]
    if missing:
        raise MissingExtraError(
            f"{purpose} needs {', '.join(repr(m) for m in missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed; install it with: "
            f"pip install 'fxtap[{extra}]'",
            extra=extra,
            packages=tuple(missing),
        )


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
