"""Benchmark fxtap's extractor against torchvision's, forward hooks and a hand-written cut.

For each case it reports the parameters each extractor keeps, forward latency as a ratio to
the full model (medians of interleaved ``torch.utils.benchmark.Timer`` runs), build time and
the time of one ``.train()``/``.eval()`` switch.

    python benchmarks/bench_extract.py --threads 1 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import feature_extraction as tv_fx

import fxtap
from _common import add_image_options, add_timing_options, timer_rounds

__all__ = ["Case", "Result", "main", "measure"]


@dataclass(frozen=True)
class Case:
    """One model cut at one node."""

    label: str
    build: Callable[[], nn.Module]
    node: str
    truncated: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None


@dataclass
class Result:
    """Measurements of one case; latencies are medians in milliseconds."""

    label: str
    params_full: int
    params_fxtap: int
    params_torchvision: int
    latency_ms: dict[str, float] = field(default_factory=dict)
    build_s: dict[str, float] = field(default_factory=dict)
    switch_ms: dict[str, float] = field(default_factory=dict)


def resnet50_to_layer2(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ResNet-50's forward written out up to ``layer2``."""
    m: Any = model
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer2(m.layer1(x))


CASES = (
    Case("resnet50@layer2", torchvision.models.resnet50, "layer2", resnet50_to_layer2),
    Case("vit_b_16@conv_proj", torchvision.models.vit_b_16, "conv_proj"),
    Case(
        "vit_b_16@encoder_layer_5",
        torchvision.models.vit_b_16,
        "encoder.layers.encoder_layer_5",
    ),
    Case("densenet201@denseblock3", torchvision.models.densenet201, "features.denseblock3"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_options(parser, rounds=5, min_run_time=0.3)
    add_image_options(parser)
    parser.add_argument("--only", default="", help="run cases whose label contains this")
    parser.add_argument("--json", action="store_true", help="also write JSON (default: off)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, 3, args.size, args.size)
    results = [
        measure(case, x, threads=args.threads, rounds=args.rounds, min_run_time=args.min_run_time)
        for case in CASES
        if args.only in case.label
    ]
    print(table(results, threads=args.threads, x=x))
    if args.json:
        name = f"bench_extract-cpu-torch{torch.__version__.split('+')[0]}.json"
        with open(name, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=2)
        print(f"wrote {name}")
    return 0


def measure(
    case: Case, x: torch.Tensor, *, threads: int, rounds: int, min_run_time: float
) -> Result:
    """Build every variant of ``case`` and time them, interleaved."""
    torch.manual_seed(0)
    model = case.build().eval()
    build_s = {}
    start = time.perf_counter()
    ours = fxtap.create_feature_extractor(model, [case.node]).eval()
    build_s["fxtap"] = time.perf_counter() - start
    start = time.perf_counter()
    theirs = tv_fx.create_feature_extractor(model, [case.node]).eval()
    build_s["torchvision"] = time.perf_counter() - start
    model.eval()  # torchvision's extractor shares the model's modules

    captured: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        captured["tap"] = out

    hooked = case.build().eval()
    hooked.load_state_dict(model.state_dict())
    hooked.get_submodule(case.node).register_forward_hook(hook)

    variants: dict[str, Callable[[], Any]] = {
        "full": lambda: model(x),
        "hooks": lambda: hooked(x),
        "torchvision": lambda: theirs(x),
        "fxtap": lambda: ours(x),
    }
    if case.truncated is not None:
        truncated = case.truncated
        variants["truncated"] = lambda: truncated(model, x)
    with torch.no_grad():
        samples = timer_rounds(variants, rounds=rounds, threads=threads, min_run_time=min_run_time)
    latency_ms = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    return Result(
        label=case.label,
        params_full=count(model),
        params_fxtap=count(ours),
        params_torchvision=count(theirs),
        latency_ms=latency_ms,
        build_s=build_s,
        switch_ms={
            "fxtap": switch_time(ours, repeats=200),
            "torchvision": switch_time(theirs, repeats=5),
        },
    )


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def switch_time(module: nn.Module, *, repeats: int) -> float:
    """Milliseconds for one mode switch (mean over ``repeats`` train/eval pairs)."""
    module.train()
    module.eval()
    start = time.perf_counter()
    for _ in range(repeats):
        module.train()
        module.eval()
    return (time.perf_counter() - start) / (2 * repeats) * 1e3


def table(results: list[Result], *, threads: int, x: torch.Tensor) -> str:
    """A Markdown table: parameters, latency ratios to the full model, build and switch time."""
    lines = [
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{platform.processor() or platform.machine()}, threads={threads}, "
        f"input {'x'.join(map(str, x.shape))}",
        "",
        "| case | params fxtap / torchvision / full | full ms | hooks | torchvision | fxtap "
        "| truncated | fxtap / truncated | build s fxtap / tv | switch ms fxtap / tv |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lat = r.latency_ms
        full = lat["full"]
        trunc = lat.get("truncated")
        cut = "– | –" if trunc is None else f"{trunc / full:.3f} | {lat['fxtap'] / trunc:.3f}"
        lines.append(
            f"| {r.label} | {r.params_fxtap / 1e6:.2f} M / {r.params_torchvision / 1e6:.2f} M "
            f"/ {r.params_full / 1e6:.2f} M | {full:.1f} | {lat['hooks'] / full:.3f} "
            f"| {lat['torchvision'] / full:.3f} | {lat['fxtap'] / full:.3f} | {cut} "
            f"| {r.build_s['fxtap']:.2f} / {r.build_s['torchvision']:.2f} "
            f"| {r.switch_ms['fxtap']:.3f} / {r.switch_ms['torchvision']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
