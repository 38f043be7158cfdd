"""Benchmark the export path: a layer-2 tap of an 8-layer llama, against capture and torch.fx.

Reports forward latency as a ratio to the full model (medians of interleaved
``torch.utils.benchmark.Timer`` runs) for the export-path extractor and the capture path on the
same tap, and the time to build an extractor with torch.export next to torch.fx's on a model
both can trace (resnet18).

    python benchmarks/bench_export.py --threads 1 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch.utils.benchmark import Timer

import fxtap

__all__ = ["main"]


def _median_seconds(fn: Callable[[], Any], *, threads: int, rounds: int) -> float:
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=0.2).median


def _build_seconds(build: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        build()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: 5)")
    parser.add_argument("--json", action="store_true", help="also write JSON (default: off)")
    parser.add_argument(
        "--tap",
        default="layers.1",
        help="node to tap; layers.1 is the second of eight decoder layers (default: layers.1)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256,
    )  # fmt: skip
    model = transformers.LlamaModel(config).eval()
    ids = torch.randint(0, 1000, (2, 128))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    tap = [args.tap]
    exported = fxtap.create_feature_extractor(model, tap, example_inputs=inputs).eval()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captured = fxtap.create_feature_extractor(model, tap).eval()
    variants: dict[str, Callable[[], Any]] = {
        "full model": lambda: model(**inputs, use_cache=False),
        "export path": lambda: exported(**inputs),
        "capture path": lambda: captured(**inputs),
    }
    medians: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        for _ in range(args.rounds):
            for label, fn in variants.items():  # interleaved
                medians[label].append(_median_seconds(fn, threads=args.threads, rounds=1))
    full = statistics.median(medians["full model"])
    rows = [
        (k, statistics.median(v) * 1e3, statistics.median(v) / full) for k, v in medians.items()
    ]
    resnet = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 64, 64)
    build = {
        "torch.fx": _build_seconds(
            lambda: fxtap.create_feature_extractor(resnet, ["layer2"], tracer="fx"), 3
        ),
        "torch.export": _build_seconds(
            lambda: fxtap.create_feature_extractor(
                resnet, ["layer2"], tracer="export", example_inputs=x
            ),
            3,
        ),
        "torch.export (llama, 8 layers)": _build_seconds(
            lambda: fxtap.create_feature_extractor(model, tap, example_inputs=inputs), 1
        ),
    }
    print(
        f"llama 8 layers, hidden 256, batch 2 x 128 tokens, tap {tap[0]}, {args.threads} thread(s)"
    )
    print(f"| {'variant':<14} | {'ms':>8} | {'ratio to full':>13} |")
    print(f"|{'-' * 16}|{'-' * 10}|{'-' * 15}|")
    for label, ms, ratio in rows:
        print(f"| {label:<14} | {ms:8.2f} | {ratio:13.2f} |")
    print()
    print(f"| {'build (both modes)':<31} | {'seconds':>7} |")
    print(f"|{'-' * 33}|{'-' * 9}|")
    for label, seconds in build.items():
        print(f"| {label:<31} | {seconds:7.2f} |")
    if args.json:
        name = f"bench_export-{platform.machine()}-torch{torch.__version__.split('+')[0]}.json"
        with open(name, "w") as f:
            json.dump({"forward": rows, "build": build, "threads": args.threads}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
