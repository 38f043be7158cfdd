"""The cost report: derived figures, terminal table, JSON, CSV, heat map and plot."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fxtap._io import write_atomic
from fxtap.errors import InvalidArgumentError, LoadError, OutputPathError

__all__ = ["CSV_FIELDS", "SCHEMA", "CostReport", "NodeCost", "VariantCost"]

#: Identifies the JSON layout written by ``CostReport.to_json``.
SCHEMA = "fxtap.cost/1"
_HINT = "Pick a path in an existing, writable directory."
#: Columns of ``CostReport.to_csv``, one row per node of the full graph.
CSV_FIELDS = ("name", "op", "target", "module", "flops", "params", "output_bytes", "kept", "time_s")


@dataclass(frozen=True)
class NodeCost:
    """What one node of the full graph costs.

    Attributes:
        name: fxtap's dotted name (torch.fx's name for unnamed nodes).
        op: torch.fx's ``op``; target: its target as text; module: the owning module path.
        flops: FLOPs counted while the node ran.
        params: elements of the parameters the node uses directly.
        output_bytes: bytes of the tensors it produces.
        kept: whether the extractor keeps it.
        time_s: median seconds of the node in a node-by-node run (``None`` if not timed).
    """

    name: str
    op: str
    target: str
    module: str
    flops: int
    params: int
    output_bytes: int
    kept: bool
    time_s: float | None = None


@dataclass(frozen=True)
class VariantCost:
    """Timings and peak memory of one variant (``full``, ``hooks`` or ``extractor``).

    Attributes:
        samples: wall seconds per call, one per round (the raw data).
        device_samples: CUDA-event seconds per call, one per round (empty off CUDA).
        runs: calls timed in each round.
        median, iqr: of ``samples``.
        ratio: median over rounds of this variant's time / the full model's in that round.
        ratio_ci: 95% bootstrap interval of ``ratio``.
        peak_bytes, peak_node: liveness estimate of peak activation memory and where it is.
        profiler_peak_bytes: peak of ``torch.profiler``'s CPU allocations, when recorded.
        cuda_peak_bytes: ``max_memory_allocated`` above the baseline, on CUDA.
    """

    name: str
    samples: tuple[float, ...]
    device_samples: tuple[float, ...]
    runs: tuple[int, ...]
    median: float
    iqr: float
    ratio: float
    ratio_ci: tuple[float, float]
    peak_bytes: int
    peak_node: str
    profiler_peak_bytes: int | None = None
    cuda_peak_bytes: int | None = None


@dataclass(frozen=True)
class CostReport:
    """Cost of an extractor next to the full model; build one with ``fxtap.cost.compare``."""

    model: str
    mode: str
    device: str
    threads: int
    outputs: dict[str, str]
    nodes: tuple[NodeCost, ...]
    op_flops: dict[str, int]
    uncounted_ops: dict[str, int]
    total_flops: int
    full_params: int
    kept_params: int
    full_bytes: int
    kept_bytes: int
    shared_bytes: int
    variants: tuple[VariantCost, ...]
    notes: tuple[str, ...] = ()
    environment: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def kept_flops(self) -> int:
        """FLOPs of the nodes the extractor keeps."""
        return sum(n.flops for n in self.nodes if n.kept)

    @property
    def kept_fraction(self) -> float:
        """Kept FLOPs / total FLOPs (1.0 for a graph without counted FLOPs)."""
        return self.kept_flops / self.total_flops if self.total_flops else 1.0

    @property
    def kept_time_share(self) -> float | None:
        """Share of the full run's node-by-node time spent in kept nodes (``None`` untimed)."""
        times = [(n.time_s, n.kept) for n in self.nodes if n.time_s is not None]
        total = sum(t for t, _ in times)
        return sum(t for t, k in times if k) / total if times and total > 0 else None

    @property
    def freed_bytes(self) -> int:
        """Bytes freed only once the original model is dropped (the rest is shared)."""
        return self.full_bytes - self.shared_bytes

    def variant(self, name: str) -> VariantCost:
        """The variant called ``name``; raises ``InvalidArgumentError`` for unknown names."""
        for v in self.variants:
            if v.name == name:
                return v
        raise InvalidArgumentError(
            f"no variant {name!r} in this report; expected one of "
            + ", ".join(repr(v.name) for v in self.variants)
        )

    @property
    def ideal_time(self) -> float:
        """The physical limit: full-model time × kept FLOP fraction."""
        return self.variant("full").median * self.kept_fraction

    @property
    def efficiency(self) -> float:
        """Ideal extractor time / measured extractor time (1.0 is the limit).

        Taken from the median paired ratio (kept FLOP fraction / extractor-to-full ratio), so
        load that slows a whole round cancels out.
        """
        return self.kept_fraction / self.variant("extractor").ratio

    @property
    def speedup(self) -> float:
        """Full-model time / extractor time, from the median paired ratio."""
        return 1.0 / self.variant("extractor").ratio

    @property
    def possible_speedup(self) -> float:
        """The speedup at the physical limit: 1 / kept FLOP fraction."""
        return 1.0 / self.kept_fraction if self.kept_fraction > 0 else float("inf")

    def flops_by(self, key: str = "module", *, depth: int | None = 1) -> dict[str, int]:
        """FLOPs summed by ``'module'`` (path cut to ``depth`` parts), ``'op'`` (aten op) or
        ``'node'``; every grouping sums exactly to ``total_flops``."""
        if key == "op":
            return dict(self.op_flops)
        if key not in ("module", "node"):
            raise InvalidArgumentError(f"key {key!r}: expected 'module', 'op' or 'node'")
        out: dict[str, int] = {}
        for n in self.nodes:
            group = n.name if key == "node" else ".".join(n.module.split(".")[:depth])
            out[group] = out.get(group, 0) + n.flops
        return out

    def heat(self) -> dict[str, float]:
        """FLOPs per node name scaled to 0..1 by the costliest node, for graph renderers."""
        top = max((n.flops for n in self.nodes), default=0)
        return {n.name: (n.flops / top if top else 0.0) for n in self.nodes}

    def table(self) -> str:
        """A compact text table for the terminal."""
        head = (
            f"{self.model} -> {', '.join(self.outputs.values())}  "
            f"({self.mode}, {self.device}, {self.threads} threads, "
            f"{len(self.variants[0].samples)} rounds)"
        )
        profiled = any(v.profiler_peak_bytes is not None for v in self.variants)
        peak_head = "peak act. (est / profiler)" if profiled else "peak act."
        rows = [("variant", "FLOPs", "params", peak_head, "median", "IQR", "ratio [95% CI]")]
        for v in self.variants:
            kept = v.name == "extractor"
            flops = self.kept_flops if kept else self.total_flops
            params = self.kept_params if kept else self.full_params
            low, high = v.ratio_ci
            rows.append(
                (
                    v.name,
                    _si(flops) + (f" ({self.kept_fraction:.1%})" if kept else ""),
                    _si(params),
                    _bytes(v.cuda_peak_bytes or v.peak_bytes)
                    + (f" / {_bytes(v.profiler_peak_bytes)}" if v.profiler_peak_bytes else ""),
                    _ms(v.median),
                    _ms(v.iqr),
                    f"{v.ratio:.3f} [{low:.3f}, {high:.3f}]",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [head] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        if any(v.name == "extractor" for v in self.variants):
            lines.append(
                f"physical limit: {_ms(self.ideal_time)} (full × {self.kept_fraction:.4f} kept "
                f"FLOPs); efficiency {self.efficiency:.2f}; speedup {self.speedup:.2f}× of "
                f"{self.possible_speedup:.2f}× possible"
            )
        share = self.kept_time_share
        if share is not None:
            lines.append(f"kept nodes take {share:.1%} of the full run's node-by-node time")
        ex = self.variant("extractor")
        if ex.peak_node:  # a capture extractor has no graph to estimate from
            lines.append(f"peak activations at {ex.peak_node!r} (extractor, liveness estimate)")
        lines.append(
            f"weights: dropping the original model frees {_bytes(self.freed_bytes)}; the "
            f"extractor shares its {_bytes(self.shared_bytes)} with it"
        )
        if self.uncounted_ops:
            ops = ", ".join(f"{k} ×{v}" for k, v in list(self.uncounted_ops.items())[:6])
            more = len(self.uncounted_ops) - 6
            lines.append(f"counted as 0 FLOPs: {ops}" + (f" and {more} more" if more > 0 else ""))
        lines.extend(self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Everything, raw samples included, as JSON-ready values.

        ``"summary"`` repeats the headline figures ``table()`` shows (kept FLOP fraction, ideal
        time, efficiency, speedup and possible speedup), derived from the rest;
        ``from_dict`` ignores it.
        """
        return {"schema": SCHEMA, "summary": self.summary(), **dataclasses.asdict(self)}

    def summary(self) -> dict[str, float | int | None]:
        """The headline figures of ``table()``, as numbers (``None`` where undefined)."""

        def finite(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return {
            "total_flops": self.total_flops,
            "kept_flops": self.kept_flops,
            "kept_fraction": self.kept_fraction,
            "ideal_time_s": finite(self.ideal_time),
            "efficiency": finite(self.efficiency),
            "speedup": finite(self.speedup),
            "possible_speedup": finite(self.possible_speedup),
        }

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write ``to_dict()`` as JSON; raises ``OutputPathError`` if ``path`` is unwritable."""
        write_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n", hint=_HINT)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostReport:
        """Rebuild a report from ``to_dict()`` output."""
        if data.get("schema") != SCHEMA:
            raise LoadError(
                f"cost report schema {data.get('schema')!r} is not {SCHEMA!r}; write the "
                "report again with this fxtap version"
            )
        body = {k: v for k, v in data.items() if k not in ("schema", "summary")}
        body["nodes"] = tuple(NodeCost(**n) for n in body["nodes"])
        body["variants"] = tuple(
            VariantCost(
                **{
                    **v,
                    "samples": tuple(v["samples"]),
                    "device_samples": tuple(v["device_samples"]),
                    "runs": tuple(v["runs"]),
                    "ratio_ci": tuple(v["ratio_ci"]),
                }
            )
            for v in body["variants"]
        )
        body["notes"] = tuple(body.get("notes", ()))
        return cls(**body)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> CostReport:
        """Read a report written by ``to_json``."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise LoadError(f"cannot read cost report {os.fspath(path)!r}: {exc}") from exc
        return cls.from_dict(data)

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """Write one row per node of the full graph with the columns of ``CSV_FIELDS``."""
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for n in self.nodes:
            writer.writerow(dataclasses.asdict(n))
        write_atomic(path, text.getvalue(), hint=_HINT)

    def plot(self, path: str | os.PathLike[str]) -> None:
        """Draw FLOPs accumulated along the graph with the cut marked, and latency per variant."""
        from fxtap._extras import require_extra
        from fxtap.cost._plot import plot_report

        require_extra("plot", purpose="CostReport.plot()")
        try:
            plot_report(self, path)
        except OutputPathError:
            raise
        except OSError as exc:
            raise _path_error(path, exc) from exc


def _path_error(path: Any, exc: OSError) -> OutputPathError:
    return OutputPathError(
        f"cannot write {os.fspath(path)!r}: {exc.strerror or exc}; pick a path in an existing, "
        "writable directory"
    )


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


def _bytes(value: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f} B"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} µs"
