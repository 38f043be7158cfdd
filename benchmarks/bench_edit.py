"""Benchmark edits and cuts on resnet50: a compiled ``Scale`` at ``layer3`` against the model
and against the same edit by a forward hook, and at several cut points ``tail`` on cached
boundary values against its share of the model's FLOPs and against the same modules run by
hand (the eager suffix: what the tail would cost without fxtap).

Forward latency is the median of interleaved ``torch.utils.benchmark.Timer`` runs of every
variant (``_common.interleave``: the order rotates from round to round); each ratio is the
median over rounds of the variant's time over the unedited model's (or the eager suffix's) in
the same round.

    python benchmarks/bench_edit.py --threads 1 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode

import fxtap
from _common import add_image_options, add_timing_options, interleave, list_option, timer_median
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


def _eager_suffix(model: torch.nn.Module, cut: str) -> Callable[[torch.Tensor], Any]:
    """What follows ``cut`` (``layerN`` or ``layerN.I``) in resnet's own forward, run by hand:
    the reference for the tail's time, the same modules without fxtap."""
    stages = ["layer1", "layer2", "layer3", "layer4"]
    stage, _, block = cut.partition(".")
    if stage not in stages or (block and not block.isdigit()):
        raise SystemExit(f"--cuts {cut!r}: expected layerN or layerN.I, e.g. layer3 or layer4.0")
    blocks = list(getattr(model, stage))[int(block) + 1 :] if block else []
    blocks += [getattr(model, s) for s in stages[stages.index(stage) + 1 :]]

    def run(value: torch.Tensor) -> Any:
        for module in blocks:
            value = module(value)
        return model.fc(torch.flatten(model.avgpool(value), 1))

    return run


def _stages(
    model: torch.nn.Module, x: torch.Tensor
) -> tuple[dict[str, Callable[[], Any]], dict[str, int]]:
    """Each stage of resnet run by hand on its cached input, and its FLOPs: where the time per
    FLOP goes (the stem's convolution and pooling, late stages' small maps)."""
    stem = torch.nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    pool = torch.nn.Sequential(model.avgpool, torch.nn.Flatten(1), model.fc)
    stages = {"stem": stem, **{f"layer{i}": getattr(model, f"layer{i}") for i in range(1, 5)}}
    stages["avgpool + fc"] = pool
    variants: dict[str, Callable[[], Any]] = {}
    flops: dict[str, int] = {}
    value = x
    with torch.no_grad():
        for name, stage in stages.items():
            variants[f"stage {name}"] = lambda s=stage, v=value: s(v)
            flops[name] = _flops(lambda s=stage, v=value: s(v))
            value = stage(value)
    return variants, flops


def _paired(
    head: Callable[[], Any], tail: Callable[[], Any], eager: Callable[[], Any], args: Any
) -> float:
    """Median over ``--pairs`` pairs of one tail call over one eager-suffix call, in a random
    order per pair, each right after an untimed head call: both start from the cache state a
    pipeline leaves (in the interleaved rounds the tail always follows its head, and the
    eager suffix the tail, whose weights it finds warm)."""
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    order = random.Random(0)
    ratios = []
    for _ in range(args.pairs):
        seconds = {}
        for label in order.sample(["tail", "eager"], 2):
            head()
            start = clock()
            (tail if label == "tail" else eager)()
            seconds[label] = clock() - start
        ratios.append(seconds["tail"] / seconds["eager"])
    return statistics.median(ratios)


def _ratio(times: list[float], base: list[float]) -> float:
    # NOTE: each round's ratio is taken to the variant it is compared with in that round, then
    # the median of the ratios: a machine whose load drifts between rounds shifts both sides
    return statistics.median(t / b for t, b in zip(times, base, strict=True))


def _cpu_median(fn: Callable[[], Any], *, threads: int, min_run_time: float) -> float:
    """``_common.timer_median`` on the process's CPU clock: the seconds this process computed,
    which other processes on a shared machine do not stretch (as they do wall time)."""
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, timer=time.process_time)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def _time_rounds(
    variants: dict[str, Callable[[], Any]], model: torch.nn.Module, args: argparse.Namespace
) -> dict[str, list[float]]:
    """Each variant's median seconds in each round (``_common.interleave``: the order rotates
    by one from round to round, so no variant always runs first)."""

    def measure(label: str, fn: Callable[[], Any], _round: int) -> float:
        handle = (
            model.layer3.register_forward_hook(lambda _m, _i, out: out * 0.5)
            if label.startswith("forward hook")
            else None
        )
        try:
            if args.clock == "cpu":
                return _cpu_median(fn, threads=args.threads, min_run_time=args.min_run_time)
            return timer_median(fn, threads=args.threads, min_run_time=args.min_run_time)
        finally:
            if handle is not None:
                handle.remove()

    with torch.no_grad():
        return interleave(variants, args.rounds, measure)


def _report(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    cuts: dict[str, Any],
    same: bool,
    stages: dict[str, Any],
) -> None:
    """Print both tables; with ``--json``, write them too."""
    print(
        f"resnet50, batch {args.batch} x 3 x {args.size} x {args.size}, {args.threads} thread(s), "
        f"{args.rounds} interleaved rounds, {args.clock} clock; edited graph equals the hooked "
        f"model: {same}"
    )
    print(f"| {'variant':<32} | {'ms':>8} | {'ratio to model':>14} |")
    print(f"|{'-' * 34}|{'-' * 10}|{'-' * 16}|")
    for row in rows:
        print(f"| {row['variant']:<32} | {row['ms']:8.2f} | {row['ratio']:14.3f} |")
    print(
        "\n| cut | tail ms | tail FLOP share | tail time share | time / FLOP share "
        "| eager suffix share | tail / eager suffix | paired | head + tail |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cut, i in cuts.items():
        print(
            f"| {cut} | {i['tail_ms']:.2f} | {i['tail_flop_share']:.3f} | "
            f"{i['tail_time_share']:.3f} | {i['tail_time_share'] / i['tail_flop_share']:.3f} | "
            f"{i['eager_suffix_share']:.3f} | {i['tail_over_eager']:.3f} | "
            f"{i.get('paired_tail_over_eager', float('nan')):.3f} | "
            f"{i['head_share'] + i['tail_time_share']:.3f} |"
        )
    if stages:
        print("\n| stage | FLOP share | time share | GFLOP/s |\n|---|---:|---:|---:|")
        for name, i in stages.items():
            print(
                f"| {name} | {i['flop_share']:.3f} | {i['time_share']:.3f} | "
                f"{i['gflop_per_s']:.1f} |"
            )
    if args.json:
        name = f"bench_edit-{platform.machine()}-torch{torch.__version__.split('+')[0]}.json"
        with open(name, "w") as f:
            json.dump(
                {"rows": rows, "cuts": cuts, "threads": args.threads, "batch": args.batch,
                 "clock": args.clock, "stages": stages,
                 "size": args.size, "same": same},
                f,
                indent=2,
            )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_options(parser, rounds=7, min_run_time=0.3)
    add_image_options(parser)
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or the process's CPU time (steadier on a shared machine; with "
        "--threads 1 the same on an idle one) (default: wall)",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="also time tail against eager suffix in this many single-call pairs (default: 0)",
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="also time each stage of resnet50 alone, for its FLOPs per second (default: off)",
    )
    list_option(
        parser,
        "--cuts",
        ["layer1", "layer2", "layer3", "layer4.0"],
        "split points, layerN or layerN.I",
    )
    parser.add_argument("--json", action="store_true", help="also write JSON (default: off)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    edited = fxtap.edit(model, {"layer3": Scale(0.5)}).eval()
    unedited = fxtap.edit(model, {"layer3": torch.nn.Identity()}).eval()

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
    }
    cuts: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        full_flops = _flops(lambda: model(x))
        for cut in args.cuts:
            head, tail = fxtap.split(model, cut)
            head.eval()
            tail.eval()
            boundary = head(x)
            (value,) = boundary.values()  # resnet's stages and blocks: one value crosses
            eager = _eager_suffix(model, cut)
            if not (torch.equal(tail(boundary), model(x)) and torch.equal(eager(value), model(x))):
                raise SystemExit(f"cut {cut}: the tail or the eager suffix differs from the model")
            cuts[cut] = {
                "boundary": list(boundary),
                "tail_flop_share": _flops(lambda t=tail, b=boundary: t(b)) / full_flops,
            }
            if args.pairs:
                cuts[cut]["paired_tail_over_eager"] = _paired(
                    lambda h=head: h(x),
                    lambda t=tail, b=boundary: t(b),
                    lambda e=eager, v=value: e(v),
                    args,
                )
            variants[f"head {cut}"] = lambda h=head: h(x)
            variants[f"tail {cut}"] = lambda t=tail, b=boundary: t(b)
            variants[f"eager suffix {cut}"] = lambda e=eager, v=value: e(v)
    stage_variants, stage_flops = _stages(model, x) if args.stages else ({}, {})
    times = _time_rounds({**variants, **stage_variants}, model, args)
    base = times["model"]
    rows = [
        {"variant": k, "ms": statistics.median(v) * 1e3, "ratio": _ratio(v, base)}
        for k, v in times.items()
        if not k.startswith(("head ", "tail ", "eager suffix ", "stage "))
    ]
    stages = {
        name: {"flop_share": flops / full_flops, "time_share": _ratio(times[f"stage {name}"], base),
               "gflop_per_s": flops / 1e9 / statistics.median(times[f"stage {name}"])}
        for name, flops in stage_flops.items()
    }  # fmt: skip
    with torch.no_grad():
        value = fxtap.create_feature_extractor(model, ["layer3"])(x)["layer3"]
        scale = Scale(0.5)
        edit_ms = timer_median(
            lambda: scale(value), threads=args.threads, min_run_time=args.min_run_time
        )
    rows.append({"variant": "the Scale op alone", "ms": edit_ms * 1e3,
                 "ratio": edit_ms / statistics.median(base)})  # fmt: skip
    for cut, info in cuts.items():
        info["tail_time_share"] = _ratio(times[f"tail {cut}"], base)
        info["eager_suffix_share"] = _ratio(times[f"eager suffix {cut}"], base)
        info["tail_over_eager"] = _ratio(times[f"tail {cut}"], times[f"eager suffix {cut}"])
        info["head_share"] = _ratio(times[f"head {cut}"], base)
        info["tail_ms"] = statistics.median(times[f"tail {cut}"]) * 1e3
    _report(args, rows, cuts, same, stages)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
