"""Shared fixtures: one torch thread per test, and ``untouched``, which asserts that a block of
code leaves models exactly as they were."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # NOTE: pytest-xdist already runs one test per core; on busy cores two intra-op threads
    # spin against each other and a tiny conv takes 40 ms instead of 1 ms.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """Everything a caller could notice about ``model``, cheap to compare afterwards.

    Parameters and buffers (identity, values bitwise, ``requires_grad``), the ``training`` flag,
    class, attribute names and registered hooks (each dict's identity and handle ids) of every
    submodule.
    """
    modules = list(model.named_modules(remove_duplicate=False))
    return {
        "tensors": [
            (kind, name, id(t), t.requires_grad, t.detach().clone())
            for kind, items in (
                ("parameter", model.named_parameters(remove_duplicate=False)),
                ("buffer", model.named_buffers(remove_duplicate=False)),
            )
            for name, t in items
        ],
        "modules": [(name, id(m), type(m), m.training) for name, m in modules],
        "attributes": [(name, sorted(vars(m))) for name, m in modules],
        "hooks": [
            (name, attr, id(value), tuple(value))
            for name, m in modules
            for attr, value in sorted(vars(m).items())
            if "hooks" in attr and isinstance(value, dict)
        ],
    }


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Assert two fingerprints are equal, saying what changed."""
    for key in ("modules", "attributes", "hooks"):
        assert before[key] == after[key], f"the model's {key} changed"
    assert len(before["tensors"]) == len(after["tensors"]), "parameters or buffers were added"
    for old, new in zip(before["tensors"], after["tensors"]):
        assert old[:4] == new[:4], f"{old[0]} {old[1]!r} was replaced or changed requires_grad"
        a, b = old[4], new[4]
        same = a.shape == b.shape and a.dtype == b.dtype
        same = same and torch.equal(
            a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)
        )
        assert same, f"the value of {old[0]} {old[1]!r} changed"


@pytest.fixture
def untouched() -> Callable[..., contextlib.AbstractContextManager[None]]:
    """``with untouched(model, ...):`` fails if the block changes any of the given models."""

    @contextlib.contextmanager
    def check(*models: Any) -> Iterator[None]:
        watched = [m for m in models if isinstance(m, nn.Module)]
        before = [fingerprint(m) for m in watched]
        yield
        for m, fp in zip(watched, before):
            assert_same(fp, fingerprint(m))

    return check
