"""Benchmark edits and cuts on resnet50: a compiled ``Scale`` at ``layer3`` against the model
and against the same edit by a forward hook, and ``tail`` on cached boundary values against
its share of the model's FLOPs.

Forward latency is the median of interleaved ``torch.utils.benchmark.Timer`` runs of every
variant (``_common.interleave``: the order rotates from round to round); each ratio is the median over rounds of the variant's time over the unedited model's
in the same round.

    python benchmarks/bench_edit.py --threads 1 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

import fxtap
from _common import add_image_options, add_timing_options, interleave, timer_median
from fxtap.edits import Scale

__all__ = ["main"]


def _flops(fn: Callable[[], Any]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def _nnsight_variant(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """nnsight's intervention making the same edit, when nnsight is importable (it is no
    dependency of fxtap: put it on PYTHONPATH, e.g. ``pip install --target DIR nnsight``)."""
    try:
        from nnsight import NNsight
    except ImportError:
        print("nnsight is not installed: its row is left out")
        return {}
    wrapped = NNsight(model)

    def run() -> Any:
        with wrapped.trace(x):
            wrapped.layer3.output = wrapped.layer3.output * 0.5
            out = wrapped.output.save()
        return out

    return {"nnsight intervention (Scale)": run}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_options(parser, rounds=7, min_run_time=0.3)
    add_image_options(parser)
    parser.add_argument("--json", action="store_true", help="also write JSON (default: off)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    edited = fxtap.edit(model, {"layer3": Scale(0.5)}).eval()
    unedited = fxtap.edit(model, {"layer3": torch.nn.Identity()}).eval()
    head, tail = fxtap.split(model, "layer3")
    head.eval()
    tail.eval()
    with torch.no_grad():
        boundary = head(x)

    hook_handle = model.layer3.register_forward_hook(lambda _m, _i, out: out * 0.5)
    with torch.no_grad():
        same = torch.equal(edited(x), model(x))
    hook_handle.remove()
    # NOTE: the hook stays registered while it is timed (a user keeps it); registered and
    # removed per call it costs a little more
    variants: dict[str, Callable[[], Any]] = {
        "model": lambda: model(x),
        "edited graph (Scale at layer3)": lambda: edited(x),
        "graph with an Identity edit": lambda: unedited(x),
        "forward hook (Scale at layer3)": lambda: model(x),
        **_nnsight_variant(model, x),
        "head (up to layer3)": lambda: head(x),
        "tail on cached layer3": lambda: tail(boundary),
    }

    def measure(label: str, fn: Callable[[], Any], _round: int) -> float:
        handle = (
            model.layer3.register_forward_hook(lambda _m, _i, out: out * 0.5)
            if label.startswith("forward hook")
            else None
        )
        try:
            return timer_median(fn, threads=args.threads, min_run_time=args.min_run_time)
        finally:
            if handle is not None:
                handle.remove()

    with torch.no_grad():
        medians = interleave(variants, args.rounds, measure)
        full_flops = _flops(lambda: model(x))
        tail_flops = _flops(lambda: tail(boundary))
    # NOTE: each round's ratio is taken to the model timed in that round, then the median of
    # the ratios: a machine whose load drifts between rounds shifts both sides of a ratio
    rows = [
        {
            "variant": k,
            "ms": statistics.median(v) * 1e3,
            "ratio": statistics.median(t / b for t, b in zip(v, medians["model"], strict=True)),
        }
        for k, v in medians.items()
    ]
    with torch.no_grad():
        value = boundary["layer3.5.relu_2"]
        scale = Scale(0.5)
        edit_ms = timer_median(
            lambda: scale(value), threads=args.threads, min_run_time=args.min_run_time
        )
    rows.append({"variant": "the Scale op alone", "ms": edit_ms * 1e3,
                 "ratio": edit_ms / statistics.median(medians["model"])})  # fmt: skip
    share = tail_flops / full_flops
    print(
        f"resnet50, batch {args.batch} x 3 x {args.size} x {args.size}, {args.threads} thread(s), "
        f"{args.rounds} interleaved rounds; edited graph equals the hooked model: {same}"
    )
    print(f"| {'variant':<32} | {'ms':>8} | {'ratio to model':>14} |")
    print(f"|{'-' * 34}|{'-' * 10}|{'-' * 16}|")
    for row in rows:
        print(f"| {row['variant']:<32} | {row['ms']:8.2f} | {row['ratio']:14.3f} |")
    tail_ratio = next(r["ratio"] for r in rows if r["variant"].startswith("tail"))
    head_ratio = next(r["ratio"] for r in rows if r["variant"].startswith("head"))
    print(
        f"\ntail FLOPs: {share:.3f} of the model's; tail time: {tail_ratio:.3f} of the model's "
        f"(time / FLOP share = {tail_ratio / share:.3f}); head + tail time: "
        f"{head_ratio + tail_ratio:.3f} of the model's"
    )
    if args.json:
        name = f"bench_edit-{platform.machine()}-torch{torch.__version__.split('+')[0]}.json"
        with open(name, "w") as f:
            json.dump(
                {"rows": rows, "tail_flop_share": share, "head_plus_tail": head_ratio + tail_ratio, "threads": args.threads,
                 "batch": args.batch, "size": args.size, "same": same},
                f,
                indent=2,
            )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
