"""Samples/s of a dataset job against a plain loop over the extractor and forward hooks.

resnet50 (random weights), taps ``layer3`` and ``avgpool`` (pooled), generated 224x224 PNG
images read by ImageFolder. The images are cut into ``--blocks`` consecutive blocks; on each
block the three variants run back to back (their order rotating from block to block), so each
ratio compares runs made minutes apart at most, whatever else the machine does meanwhile:

- ``job``: ``fxtap.extract_dataset`` into a zarr store (loading, compute, background writes);
- ``loop``: the same DataLoader, the extractor called per batch, results kept in memory;
- ``hooks``: the same loop over the full model with forward hooks (what thingsvision does);
- ``channels_last``, ``compile`` and ``channels_last+compile``: the job with those options
  (``--options``); compiling is done once before the blocks, on one batch, and its seconds are
  shown apart, with the largest difference of that batch's values from the eager job's.

``--torchrun`` adds a row: the whole job as two torchrun ranks of ``threads / 2`` threads each
against one process of ``threads`` threads, both launched the same way (start-up included).

    python benchmarks/bench_dataset.py --images 2000 --blocks 10 --threads 2 [--json FILE]

Make each block a whole number of batches (``--images`` a multiple of ``--blocks`` times
``--batch-size``): with static shapes, a block's short last batch would compile again.

Samples per second are totals over all blocks; the ratios are medians of the per-block ratios,
with their range. Each block's job opens its own store, so the job's start-up is counted once
per block, not once per dataset: the ratios are, if anything, unfavourable to the job.
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision.transforms import v2

import fxtap
from _common import interleave, wall_seconds
from fxtap.dataset._demo import make_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images (default: 2000)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default: 2)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    parser.add_argument("--blocks", type=int, default=10, help="interleaved blocks (default: 10)")
    parser.add_argument(
        "--options",
        default="channels_last,compile,channels_last+compile",
        help="job options to time, comma-separated, '+' to combine, or 'none' "
        "(default: channels_last,compile,channels_last+compile)",
    )
    parser.add_argument(
        "--taps",
        default="layer3,avgpool",
        help="rows to measure, comma-separated: layer3, avgpool (default: layer3,avgpool)",
    )
    parser.add_argument(
        "--torchrun", action="store_true", help="add the 2-rank torchrun row (default: off)"
    )
    parser.add_argument("--json", help="write the results as JSON (default: none)")
    args = parser.parse_args()
    args.options = [o for o in args.options.split(",") if o and o != "none"]
    args.taps = [t for t in args.taps.split(",") if t]
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="fxtap-bench-"))
    try:
        rows = run(args, work)
        launched = launches(args, work) if args.torchrun else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"resnet50, {args.images} images 224x224, batch {args.batch_size}, {args.threads} threads, "
        f"{args.blocks} interleaved blocks; samples/s, median ratio [min, max] over blocks"
    )
    print(f"{'taps':<18}{'job':>8}{'loop':>8}{'hooks':>8}{'job/loop':>22}{'loop/hooks':>22}")
    for r in rows:
        print(
            f"{r['taps']:<18}{r['job']:>8.2f}{r['loop']:>8.2f}{r['hooks']:>8.2f}"
            f"{_ratio(r['job/loop']):>22}{_ratio(r['loop/hooks']):>22}"
        )
    for r in rows:
        for option in args.options:
            print(
                f"{r['taps']:<18}{option:<24}{r[option]:>8.2f} samples/s, {option}/loop "
                f"{_ratio(r[option + '/loop'])}, set up in {r[option + ' setup s']:.1f} s, "
                f"max |{option} - eager| {r[option + ' max diff']:.2g} "
                f"(values up to {r['max abs']:.3g})"
            )
    if launched is not None:
        print(
            f"torchrun 2 ranks x {launched['threads per rank']} threads: "
            f"{launched['torchrun']:.2f} samples/s; one process x {args.threads} threads: "
            f"{launched['single']:.2f} samples/s; ratio {launched['torchrun/single']:.2f} "
            "(start-up included)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "torchrun": launched}, indent=1))


def _ratio(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]"


def run(args: argparse.Namespace, work: Path) -> list[dict]:
    make_images(work / "images", count=args.images, size=224)
    transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    dataset = torchvision.datasets.ImageFolder(str(work / "images"), transform=transform)
    model = torchvision.models.resnet50(weights=None).eval()
    edges = [round(i * args.images / args.blocks) for i in range(args.blocks + 1)]
    blocks = [
        torch.utils.data.Subset(dataset, range(a, b)) for a, b in itertools.pairwise(edges) if b > a
    ]
    rows = []
    for label, nodes, pool in (
        ("layer3", ["layer3"], None),
        ("avgpool (pooled)", ["avgpool"], "avg"),
    ):
        if label.split()[0] not in args.taps:
            continue
        extractor = fxtap.create_feature_extractor(model, nodes).eval()

        def job(
            block: Any,
            extractor: Any = extractor,
            pool: Any = pool,
            out: str = "out",
            **options: Any,
        ) -> None:
            fxtap.extract_dataset(
                extractor,
                block,
                work / out,
                batch_size=args.batch_size,
                pool=pool,
                progress=False,
                resume=False,
                **options,
            )

        def loop(block: Any, extractor: Any = extractor) -> None:
            kept = []
            with torch.inference_mode():
                for x, _ in torch.utils.data.DataLoader(block, batch_size=args.batch_size):
                    kept.append(extractor(x))

        def hooks(block: Any, nodes: list[str] = nodes) -> None:
            kept: list[torch.Tensor] = []
            handles = [
                model.get_submodule(n).register_forward_hook(
                    lambda m, i, o: kept.append(o.detach())
                )
                for n in nodes
            ]
            try:
                with torch.inference_mode():
                    for x, _ in torch.utils.data.DataLoader(block, batch_size=args.batch_size):
                        model(x)
            finally:
                for h in handles:
                    h.remove()

        variants: dict[str, Any] = {"job": job, "loop": loop, "hooks": hooks}
        first = torch.utils.data.Subset(dataset, range(min(args.batch_size, args.images)))
        job(first, out="eager")
        eager = fxtap.open_features(work / "eager").tensor(nodes[0])
        setup: dict[str, float] = {"max abs": eager.abs().max().item()}
        # NOTE: converted once, as a user running many jobs would: the job then runs it as it
        # is, and torch.compile reuses its compiled code from block to block
        in_channels_last = copy.deepcopy(extractor).to(memory_format=torch.channels_last)
        for option in args.options:
            variant = functools.partial(
                job,
                **({"extractor": in_channels_last} if "channels_last" in option else {}),
                **dict.fromkeys(option.split("+"), True),
            )
            # compiling (or a first channels-last pass) happens here, once, timed apart
            setup[option + " setup s"] = wall_seconds(functools.partial(variant, out=option), first)
            values = fxtap.open_features(work / option).tensor(nodes[0])
            setup[option + " max diff"] = (values - eager).abs().max().item()
            variants[option] = variant

        def progress(i: int, seconds: dict[str, list[float]], label: str = label) -> None:
            print(
                f"{label} block {i + 1}/{len(blocks)}: "
                + ", ".join(f"{n} {len(blocks[i]) / s[-1]:.2f}/s" for n, s in seconds.items()),
                flush=True,
            )

        # NOTE: one timed pass per variant and block: Timer.timeit would first run each
        # pass twice more to warm up, tripling a run that is minutes long already
        seconds = interleave(
            variants,
            len(blocks),
            lambda _n, fn, i: wall_seconds(fn, blocks[i]),
            after_round=progress,
        )
        row: dict[str, Any] = {
            "taps": label,
            **{k: args.images / sum(v) for k, v in seconds.items()},
            "job/loop": [j / lo for j, lo in zip(seconds["loop"], seconds["job"])],
            "loop/hooks": [h / lo for lo, h in zip(seconds["loop"], seconds["hooks"])],
            **{
                f"{option}/loop": [lo / j for j, lo in zip(seconds[option], seconds["loop"])]
                for option in args.options
            },
            **setup,
            "seconds": seconds,
        }
        rows.append(row)
    return rows


SCRIPT = """
import sys, torch, torchvision
from torchvision.transforms import v2
import fxtap
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
model = torchvision.models.resnet50(weights=None)
transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
dataset = torchvision.datasets.ImageFolder(sys.argv[2], transform=transform)
fxtap.extract_dataset(model, dataset, sys.argv[3], return_nodes=["layer3"], pool="avg",
                      batch_size=int(sys.argv[4]), progress=False, resume=False, seed=0)
"""


def launches(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The whole job under torchrun (2 ranks) and as one process, each launched as a program."""
    script = work / "job.py"
    script.write_text(textwrap.dedent(SCRIPT))
    per_rank = max(1, args.threads // 2)
    env = {**os.environ, "OMP_NUM_THREADS": str(per_rank)}
    common = [str(work / "images"), str(work / "launched"), str(args.batch_size)]
    seconds = {}
    for name, cmd in (
        ("single", [sys.executable, str(script), str(args.threads), *common]),
        (
            "torchrun",
            [
                *(sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"),
                *("--master-addr", "127.0.0.1", "--master-port", "29533"),
                *(str(script), str(per_rank), *common),
            ],
        ),
    ):
        started = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        seconds[name] = time.perf_counter() - started
    return {
        "threads per rank": per_rank,
        "single": args.images / seconds["single"],
        "torchrun": args.images / seconds["torchrun"],
        "torchrun/single": seconds["single"] / seconds["torchrun"],
    }


if __name__ == "__main__":
    main()
