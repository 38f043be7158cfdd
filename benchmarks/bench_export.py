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

import fxtap
from _common import add_timing_options, timer_rounds

__all__ = ["main"]


def _build_seconds(build: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        build()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _build_split(build: Callable[[], Any]) -> dict[str, float]:
    """Seconds of one build spent in ``torch.export.export``, in the build-time check
    (``check_export``), and in fxtap's own work (rebuilding, naming, pruning, compiling)."""
    from fxtap.trace import _export as export_module

    spent = {"torch.export.export": 0.0, "check against eager": 0.0}

    def timed(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start

        return wrapper

    export, check = torch.export.export, export_module.check_export
    torch.export.export = timed(export, "torch.export.export")  # type: ignore[assignment]
    export_module.check_export = timed(check, "check against eager")  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        build()
        total = time.perf_counter() - start
    finally:
        torch.export.export = export  # type: ignore[assignment]
        export_module.check_export = check  # type: ignore[assignment]
    own = total - sum(spent.values())
    return {
        "total": total,
        **spent,
        "fxtap's own work": own,
        "own work / export": own / spent["torch.export.export"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_options(parser, rounds=5, min_run_time=0.2)
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
        captured = fxtap.create_feature_extractor(model, tap, tracer="fx").eval()
    # other lengths than the 128 tokens it was built with: the sequence dim is dynamic
    short = {k: v[:, :64] for k, v in inputs.items()}
    long_ids = torch.randint(0, 1000, (2, 200))
    long = {"input_ids": long_ids, "attention_mask": torch.ones_like(long_ids)}
    variants: dict[str, Callable[[], Any]] = {
        "full model": lambda: model(**inputs, use_cache=False),
        "export path": lambda: exported(**inputs),
        "capture path": lambda: captured(**inputs),
        "full, 64 tok": lambda: model(**short, use_cache=False),
        "export, 64 tok": lambda: exported(**short),
        "full, 200 tok": lambda: model(**long, use_cache=False),
        "export, 200 tok": lambda: exported(**long),
    }
    with torch.no_grad():
        medians = timer_rounds(
            variants, rounds=args.rounds, threads=args.threads, min_run_time=args.min_run_time
        )
    fulls = {k: statistics.median(v) for k, v in medians.items() if k.startswith("full")}

    def full_of(label: str) -> float:  # each row against the full model at its length
        tokens = label.partition(", ")[2]
        return next(
            (v for k, v in fulls.items() if tokens and k.endswith(tokens)), fulls["full model"]
        )

    rows = [
        (k, statistics.median(v) * 1e3, statistics.median(v) / full_of(k))
        for k, v in medians.items()
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
        "no options (llama, 8 layers)": _build_seconds(
            lambda: fxtap.create_feature_extractor(model, tap), 1
        ),
    }
    split = _build_split(lambda: fxtap.create_feature_extractor(model, tap, example_inputs=inputs))
    print(
        f"llama 8 layers, hidden 256, batch 2 x 128 tokens, tap {tap[0]}, {args.threads} thread(s)"
    )
    print(f"| {'variant':<16} | {'ms':>8} | {'ratio to full':>13} |")
    print(f"|{'-' * 18}|{'-' * 10}|{'-' * 15}|")
    for label, ms, ratio in rows:
        print(f"| {label:<16} | {ms:8.2f} | {ratio:13.2f} |")
    print()
    print(f"| {'build (both modes)':<31} | {'seconds':>7} |")
    print(f"|{'-' * 33}|{'-' * 9}|")
    for label, seconds in build.items():
        print(f"| {label:<31} | {seconds:7.2f} |")
    print()
    print(f"| {'llama build, where it goes':<31} | {'seconds':>7} |")
    print(f"|{'-' * 33}|{'-' * 9}|")
    for label, seconds in split.items():
        print(f"| {label:<31} | {seconds:7.2f} |")
    if args.json:
        name = f"bench_export-{platform.machine()}-torch{torch.__version__.split('+')[0]}.json"
        with open(name, "w") as f:
            result = {"forward": rows, "build": build, "split": split, "threads": args.threads}
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
