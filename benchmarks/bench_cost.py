"""Cost of fxtap extractors next to the full model and forward hooks, on torchvision models.

For each case: kept FLOP fraction, parameters, latency ratios measured in interleaved rounds
(extractor / full, hooks / full, medians of per-round ratios with 95% bootstrap intervals) and
the efficiency against the physical limit (full time × kept FLOP fraction). Random weights
(``weights=None``); nothing is downloaded. Not a test: run it by hand.

    python benchmarks/bench_cost.py --threads 2 --rounds 20 --json-dir benchmarks/results
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch
import torchvision

from _common import add_image_options, add_timing_options
from fxtap.cost import CostReport, compare

#: (label, torchvision builder, tap): a cut early, in the middle, and in a dense graph.
CASES = {
    "resnet50@layer2": ("resnet50", "layer2"),
    "vit_b_16@encoder_layer_5": ("vit_b_16", "encoder.layers.encoder_layer_5"),
    "densenet201@denseblock3": ("densenet201", "features.denseblock3"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", nargs="+", choices=list(CASES), default=list(CASES), help="(default: all)"
    )
    add_timing_options(parser, threads=2, rounds=20, min_run_time=0.5)
    add_image_options(parser)
    parser.add_argument("--json-dir", default=None, help="write one JSON per case (default: none)")
    parser.add_argument(
        "--markdown", action="store_true", help="print a Markdown table too (default: off)"
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    reports: dict[str, CostReport] = {}
    for label in args.cases:
        builder, tap = CASES[label]
        model = torchvision.models.get_model(builder, weights=None).eval()
        x = torch.rand(args.batch, 3, args.size, args.size)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            report = compare(
                model,
                [tap],
                x,
                threads=args.threads,
                rounds=args.rounds,
                min_run_time=args.min_run_time,
            )
        reports[label] = report
        print(f"\n== {label}\n{report.table()}")
        for w in caught:
            print(f"warning: {w.message}")
        if args.json_dir:
            os.makedirs(args.json_dir, exist_ok=True)
            device = report.device.replace(":", "")
            name = f"cost_{label.replace('@', '_')}_{device}_torch{torch.__version__}.json"
            report.to_json(os.path.join(args.json_dir, name))
    print()
    print(summary(reports, markdown=args.markdown))
    return 0


def summary(reports: dict[str, CostReport], *, markdown: bool = False) -> str:
    """One row per case: kept FLOPs, parameters, latency ratios, efficiency."""
    head = (
        "case",
        "kept FLOPs",
        "params kept / full",
        "full (median)",
        "extractor / full",
        "hooks / full",
        "kept time share",
        "efficiency",
        "speedup (possible)",
    )
    rows = [head]
    for label, r in reports.items():
        ex, full = r.variant("extractor"), r.variant("full")
        hooks = next((v for v in r.variants if v.name == "hooks"), None)
        share = r.kept_time_share
        rows.append(
            (
                label,
                f"{r.kept_fraction:.4f}",
                f"{r.kept_params / 1e6:.2f} M / {r.full_params / 1e6:.2f} M",
                f"{full.median * 1e3:.1f} ms",
                _ratio(ex.ratio, ex.ratio_ci),
                _ratio(hooks.ratio, hooks.ratio_ci) if hooks else "n/a",
                f"{share:.3f}" if share is not None else "n/a",
                f"{r.efficiency:.3f}",
                f"{r.speedup:.2f}× ({r.possible_speedup:.2f}×)",
            )
        )
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        lines.insert(1, "|" + "|".join("---" for _ in head) + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def _ratio(value: float, ci: tuple[float, float]) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


if __name__ == "__main__":
    sys.exit(main())
