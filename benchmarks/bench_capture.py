"""Benchmark the capture path: time against tap position on models whose root cannot be traced.

A ``CaptureExtractor`` stops the forward once every requested value is captured, so a tap
should cost what the model costs up to that tap. Two models: a ViT-like stack whose root
iterates over a list of images (each block a traced submodule), tapped in several blocks, and
``fasterrcnn_mobilenet_v3_large_320_fpn`` tapped at its ``backbone``. For each tap three
variants are timed with ``torch.utils.benchmark.Timer``, interleaved in every round (in an
order that rotates from round to round): the
extractor, the model's own code up to the tap (``prefix``, written out by hand), and the full
model. Medians over rounds and the ratios extractor/prefix and extractor/full are reported.

Run:  python benchmarks/bench_capture.py [--rounds 5] [--threads 1] [--json [FILE]]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torchvision
from torch import nn

import fxtap
from _common import add_timing_options, timer_rounds

__all__ = ["Row", "main", "run"]


class Block(nn.Module):
    """A pre-norm transformer block: attention and an MLP, each with a residual."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, 4, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class ListViT(nn.Module):
    """A ViT-like stack whose root iterates over a list of token tensors (untraceable root)."""

    def __init__(self, depth: int = 12, width: int = 192) -> None:
        super().__init__()
        self.embed = nn.Linear(48, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, 10)

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for tokens in images:
            x = self.embed(tokens[None])
            for block in self.blocks:
                x = block(x)
            outs.append(self.head(x.mean(1)))
        return outs


@dataclass
class Row:
    """Median seconds of each variant for one tap, and the ratios."""

    model: str
    tap: str
    extractor: float
    prefix: float
    full: float

    @property
    def to_prefix(self) -> float:
        return self.extractor / self.prefix

    @property
    def to_full(self) -> float:
        return self.extractor / self.full


def _vit_cases(depth: int) -> list[tuple[str, str, nn.Module, Callable[[], Any], Any]]:
    torch.manual_seed(0)
    model = ListViT(depth).eval()
    images = [torch.randn(196, 48)]
    cases = []
    for k in sorted({0, depth // 4, depth // 2 - 1, 3 * depth // 4, depth - 1}):

        def prefix(k: int = k) -> Any:
            x = model.embed(images[0][None])
            for block in list(model.blocks)[: k + 1]:
                x = block(x)
            return x

        cases.append(("ListViT", f"blocks.{k}.fc2", model, prefix, images))
    return cases


def _detection_case() -> tuple[str, str, nn.Module, Callable[[], Any], Any]:
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None
    ).eval()
    images = [torch.rand(3, 320, 320)]

    def prefix() -> Any:
        batch, _ = model.transform(images)
        return model.backbone(batch.tensors)

    return ("fasterrcnn_mobilenet_v3_large_320_fpn", "backbone", model, prefix, images)


def run(
    *, rounds: int = 5, threads: int = 1, min_run_time: float = 0.2, depth: int = 12
) -> list[Row]:
    """Time every case; variants interleaved within each round."""
    torch.set_num_threads(threads)
    rows = []
    for name, tap, model, prefix, images in [*_vit_cases(depth), _detection_case()]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ex = fxtap.create_feature_extractor(model, [tap]).eval()
        variants = {
            "extractor": lambda ex=ex, images=images: ex(images),
            "prefix": prefix,
            "full": lambda model=model, images=images: model(images),
        }
        with torch.no_grad():  # the warm-up also runs the extractor's one eager check per mode
            samples = timer_rounds(
                variants, rounds=rounds, threads=threads, min_run_time=min_run_time
            )
        med = {v: statistics.median(s) for v, s in samples.items()}
        rows.append(Row(name, tap, med["extractor"], med["prefix"], med["full"]))
    return rows


def table(rows: list[Row]) -> str:
    """A Markdown table of the rows."""
    lines = [
        "| model | tap | extractor (ms) | up to the tap (ms) | full (ms) | extractor / up to tap | extractor / full |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | `{r.tap}` | {r.extractor * 1e3:.2f} | {r.prefix * 1e3:.2f} | "
            f"{r.full * 1e3:.2f} | {r.to_prefix:.3f} | {r.to_full:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_options(parser, rounds=5, min_run_time=0.2)
    parser.add_argument("--depth", type=int, default=12, help="blocks of the stack (default: 12)")
    parser.add_argument(
        "--json",
        nargs="?",
        const="",
        help="write JSON (default: none; without FILE: bench_capture-DEVICE-TORCH.json)",
    )
    args = parser.parse_args(argv)
    rows = run(
        rounds=args.rounds, threads=args.threads, min_run_time=args.min_run_time, depth=args.depth
    )
    print(table(rows))
    if args.json is not None:
        path = args.json or f"bench_capture-cpu-torch{torch.__version__}.json"
        data = {
            "torch": torch.__version__,
            "platform": platform.platform(),
            "threads": args.threads,
            "rows": [asdict(r) | {"to_prefix": r.to_prefix, "to_full": r.to_full} for r in rows],
        }
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
