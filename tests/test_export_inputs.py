"""Inputs on the export path: ``use_cache=False`` for models that take it through ``**kwargs``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

import fxtap
from fxtap.extractor import FeatureExtractor

X = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))


class Cache:
    """Not a pytree: torch.export cannot return it."""


class CachingModel(nn.Module):
    """Returns a cache unless told ``use_cache=False``, which it reads from ``**kwargs`` (as
    transformers' newer multimodal models do); ``len(x)`` keeps torch.fx off the root."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(use_cache=True)
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, **kwargs: Any) -> Any:
        out = self.fc(x) / len(x)
        return (out, Cache()) if kwargs.get("use_cache", self.config.use_cache) else (out,)


def test_use_cache_is_turned_off_through_kwargs() -> None:
    model = CachingModel().eval()
    ex = fxtap.create_feature_extractor(model, ["fc", ":output"], example_inputs={"x": X})
    assert isinstance(ex, FeatureExtractor)
    with torch.no_grad():
        got = ex(x=X)
        assert torch.equal(got[":output"][0], model(X, use_cache=False)[0])
