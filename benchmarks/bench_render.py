"""Time to SVG for large graphs, at the default settings and fully expanded.

Each model is rendered in both modes (train, eval and the side-by-side drawing, as
``fxtap render MODEL`` does), once with the defaults (repeats folded, about 800 nodes) and
once fully expanded (``fold_repeats=False, max_nodes=None``); the two variants are
interleaved. Times include tracing and every ``dot`` run. ``--baseline`` also times ``dot``
alone on DenseNet-201's DOT text without cutting hub edges, to show what the cuts save.

    python benchmarks/bench_render.py [--json] [--only densenet201 gpt135] [--baseline]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.benchmark import Timer

from fxtap.render import Rendering, render
from fxtap.render._dot import to_dot
from fxtap.render._view import build_view
from fxtap.trace import trace


class GPTBlock(nn.Module):
    """Pre-norm attention and MLP; the causal mask comes in as an argument."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        att = (q @ k.transpose(1, 2)) / d**0.5
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        x = x + self.proj(att @ v)
        return x + self.fc2(torch.relu(self.fc1(self.ln2(x))))


class GPT(nn.Module):
    """135 blocks; one causal mask feeds every block (the edges that slow dot down)."""

    def __init__(self, layers: int = 135, d: int = 32, context: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, d)
        self.blocks = nn.ModuleList(GPTBlock(d) for _ in range(layers))
        self.head = nn.Linear(d, 100)
        self.register_buffer("causal", torch.ones(context, context, dtype=torch.bool).triu(1))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        mask = self.causal.narrow(0, 0, t).narrow(1, 0, t)
        x = self.emb(idx)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(x)


def chain(n: int = 5000) -> nn.Module:
    """A 5,000-node chain of leaf modules in one scope (nothing to fold or collapse)."""
    return nn.Sequential(*[nn.ReLU() for _ in range(n)])


MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet50": lambda: torchvision.models.resnet50(weights=None),
    "vit_b_16": lambda: torchvision.models.vit_b_16(weights=None),
    "swin_b": lambda: torchvision.models.swin_b(weights=None),
    "efficientnet_b7": lambda: torchvision.models.efficientnet_b7(weights=None),
    "densenet201": lambda: torchvision.models.densenet201(weights=None),
    "chain5000": chain,
    "gpt135": GPT,
}
VARIANTS = {
    "default": {},
    "expanded": {"fold_repeats": False, "max_nodes": None},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(MODELS), help="models (default: all)")
    parser.add_argument("--json", action="store_true", help="write results as JSON (default: no)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument(
        "--baseline", action="store_true", help="time dot on uncut DenseNet-201 (default: no)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            model = MODELS[name]()
            for variant, options in VARIANTS.items():
                out = Path(tmp) / f"{name}-{variant}"
                box: list[Rendering] = []

                def run(
                    model: nn.Module = model,
                    options: dict = options,
                    out: Path = out,
                    box: list[Rendering] = box,
                ) -> None:
                    box.append(render(model, out_dir=out, **options))

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # fallbacks are reported in the table
                    seconds = Timer("run()", globals={"run": run}, num_threads=args.threads)
                    seconds = seconds.timeit(1).median
                result = box[-1]
                eval_drawing = next(d for d in result.drawings if d.mode == "eval")
                rows.append(
                    {
                        "model": name,
                        "variant": variant,
                        "seconds": round(seconds, 2),
                        "nodes": eval_drawing.nodes,
                        "layout": eval_drawing.layout,
                        "dot_seconds": round(eval_drawing.seconds, 2),
                    }
                )
                print(_row(rows[-1]), flush=True)
        if args.baseline:
            rows.append(_baseline(Path(tmp)))
            print(_row(rows[-1]))
    print()
    print(table(rows))
    if args.json:
        tag = f"{platform.machine()}-torch{torch.__version__.split('+')[0]}"
        path = Path(__file__).with_name(f"bench_render-{tag}.json")
        path.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {path}")
    return 0


def _baseline(tmp: Path) -> dict:
    """dot alone on DenseNet-201 expanded with every edge kept (no references), 120 s cap."""
    traced = trace(torchvision.models.densenet201(weights=None), training=False)
    text = to_dot([build_view(traced, title="DenseNet")], name="DenseNet")
    path = tmp / "densenet-uncut.dot"
    path.write_text(text)
    start = time.perf_counter()
    try:
        subprocess.run(
            ["dot", "-Tsvg", str(path), "-o", str(tmp / "x.svg")], timeout=120, check=True
        )
        layout = "default"
    except subprocess.TimeoutExpired:
        layout = "timed out"
    seconds = time.perf_counter() - start
    return {
        "model": "densenet201",
        "variant": "dot alone, uncut",
        "seconds": round(seconds, 2),
        "nodes": text.count(" [id="),
        "layout": layout,
        "dot_seconds": round(seconds, 2),
    }


def _row(r: dict) -> str:
    return (
        f"| {r['model']} | {r['variant']} | {r['seconds']:.1f} | {r['nodes']} | {r['layout']} "
        f"| {r['dot_seconds']:.1f} |"
    )


def table(rows: list[dict]) -> str:
    """A Markdown table of the results."""
    head = (
        "| model | settings | seconds to SVG | nodes drawn (eval) | layout | dot seconds (eval) |"
    )
    return "\n".join([head, "|---|---|---:|---:|---|---:|", *(_row(r) for r in rows)])


if __name__ == "__main__":
    raise SystemExit(main())
