"""Samples/s of a dataset job against a plain loop over the extractor and forward hooks.

resnet50 (random weights), taps ``layer3`` and ``avgpool`` (pooled), generated 224x224 PNG
images read by ImageFolder. Variants, interleaved, timed in one run:

- ``job``: ``fxtap.extract_dataset`` into a zarr store (loading, compute, background writes);
- ``loop``: the same DataLoader, the extractor called per batch, results kept in memory;
- ``hooks``: the same loop over the full model with forward hooks (what thingsvision does).

    python benchmarks/bench_dataset.py --images 2000 --threads 2 [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import torch
import torchvision
from torch.utils.benchmark import Timer
from torchvision.transforms import v2

import fxtap
from fxtap.dataset._demo import make_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images (default: 2000)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default: 2)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default: 2)")
    parser.add_argument("--json", help="write the results as JSON (default: none)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="fxtap-bench-"))
    try:
        rows = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"resnet50, {args.images} images 224x224, batch {args.batch_size}, {args.threads} threads, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(f"{'taps':<22}{'job':>10}{'loop':>10}{'hooks':>10}{'job/loop':>10}{'loop/hooks':>12}")
    for r in rows:
        print(
            f"{r['taps']:<22}{r['job']:>10.1f}{r['loop']:>10.1f}{r['hooks']:>10.1f}"
            f"{r['job'] / r['loop']:>10.2f}{r['loop'] / r['hooks']:>12.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def run(args: argparse.Namespace, work: Path) -> list[dict]:
    make_images(work / "images", count=args.images, size=224)
    transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    dataset = torchvision.datasets.ImageFolder(str(work / "images"), transform=transform)
    model = torchvision.models.resnet50(weights=None).eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size)
    rows = []
    for label, nodes, pool in (
        ("layer3", ["layer3"], None),
        ("avgpool (pooled)", ["avgpool"], "avg"),
    ):
        extractor = fxtap.create_feature_extractor(model, nodes).eval()

        def job(extractor=extractor, nodes=nodes, pool=pool) -> None:
            fxtap.extract_dataset(
                extractor,
                dataset,
                work / "out",
                batch_size=args.batch_size,
                pool=pool,
                progress=False,
                resume=False,
            )

        def loop(extractor=extractor) -> None:
            kept = []
            with torch.inference_mode():
                for x, _ in loader:
                    kept.append(extractor(x))

        def hooks(nodes=nodes) -> None:
            kept: list[torch.Tensor] = []
            handles = [
                model.get_submodule(n).register_forward_hook(
                    lambda m, i, o: kept.append(o.detach())
                )
                for n in nodes
            ]
            try:
                with torch.inference_mode():
                    for x, _ in loader:
                        model(x)
            finally:
                for h in handles:
                    h.remove()

        times: dict[str, list[float]] = {"job": [], "loop": [], "hooks": []}
        for _ in range(args.rounds):
            for name, fn in (("job", job), ("loop", loop), ("hooks", hooks)):
                seconds = (
                    Timer("fn()", globals={"fn": fn}, num_threads=args.threads).timeit(1).median
                )
                times[name].append(seconds)
        row = {"taps": label, **{k: args.images / statistics.median(v) for k, v in times.items()}}
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
