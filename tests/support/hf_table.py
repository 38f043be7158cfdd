"""docs/zoo.md's generated table of every transformers model type, from ``hf_survey`` rows.

``python -m support.hf_table SURVEY.jsonl`` (from ``tests/``, or ``make zoo-hf``) rewrites the
part of docs/zoo.md between the ``zoo-hf`` markers: the counts, the causes grouped, and one row
per model type. ``read_table()`` gives back what the page says, for tests/test_zoo_hf.py to
compare with what it measures.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["DOC", "cause", "load", "read_table", "render", "write"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "zoo.md"
BEGIN, END = "<!-- zoo-hf: begin (generated) -->", "<!-- zoo-hf: end -->"
_ROW = re.compile(r"^\| `(?P<type>[^`]+)` \| (?P<status>[^|]+?) \| (?P<kept>[^|]*?) \|")

# (pattern on the reason, cause): the first match names the cause of a row that is not pruned.
_CAUSES = (
    # not pruned although the tiny model runs
    (r"Could not guard on data-dependent|GuardOnDataDependent", "torch.export: a branch or loop on tensor values (data-dependent guard)"),
    (r"cache_utils\.\w+'?>? in output", "torch.export: the model returns a cache object, which is not a pytree"),
    (r"fake tensor in the exported program", "torch.export: a fake tensor left in the program"),
    (r"differs from the model", "the export check found the graph differs from the model"),
    (r"higher-order op", "torch.export: a higher-order op other than a grad-mode region"),
    (r"timeout|hang", "timed out (over the survey's time limit)"),
    (r"worker died", "crashed the process"),
    (r"autograd Function", "a custom autograd Function, whose own backward a graph cannot hold"),
    (r"no gradients", "no tap value has a gradient to compare (the values are equal)"),
    (r"gradients", "gradients differ from hooks (the values are equal)"),
    (r"not bitwise equal", "values differ from hooks"),
    (r"only \d+ leaf modules", "fewer than 4 leaf modules to tap"),
    (r"NodeNotFoundError", "a tap the export path does not name (a module that runs no op: nn.Identity)"),
    (r"vmapped", "the graph fails on a call: a tensor escaped vmap"),
    # the tiny model does not run on its own
    (r"takes no input this builder knows|forward needs|You have to specify|must be provided", "needs inputs the generator does not build"),
    (r"image tokens|image features|grid_thw|image_sizes|Number of patches", "needs multimodal placeholder tokens or image grids"),
    (r"prediction_length|context_length|past_values", "time-series model: needs a forecasting config"),
    (r"requires the \w+ library", "needs an optional library"),
    (r"shapes cannot be multiplied|must match the size|is invalid for input of size|expected input|normalized_shape|split_with_sizes|running_mean|expanded size|divisible|not a multiple|Kernel size|batch2 tensor|index out of range|selected index|values to unpack|must be mono", "tiny config: shapes that do not agree"),
    (r"NoneType|None\b", "tiny config: a field left unset (None)"),
    (r"layer types|per-layer attribute|full_attention|Unrecognized configuration|has no attribute", "tiny config: per-layer or nested settings the generator does not shrink"),
)  # fmt: skip


def cause(row: dict[str, Any]) -> str:
    """The short cause of a row that is not pruned (grouped in the counts)."""
    reason = row["reason"]
    for pattern, label in _CAUSES:
        if re.search(pattern, reason):
            return label
    return reason.split(":", 1)[0] or "no reason given"


def render(rows: list[dict[str, Any]]) -> str:
    """The generated part of docs/zoo.md: counts, grouped causes, one row per type."""
    rows = sorted(rows, key=lambda r: r["type"])
    status = Counter(r["status"] for r in rows)
    eager = sum(1 for r in rows if r.get("eager"))
    exact = sum(1 for r in rows if r["status"] == "pruned" and r["bitwise"])
    share = f"{100 * exact / eager:.1f} %" if eager else "n/a"
    lines = [
        BEGIN,
        "",
        f"- **{len(rows)}** model types; **{eager}** tiny models run eagerly "
        f"(forward in eval and train mode).",
        f"- **{exact}** pruned and bitwise equal to hooks in both modes, gradients too: "
        f"**{share}** of those that run eagerly.",
        f"- **{status['captured']}** captured, **{status['fails']}** fail, "
        f"**{status['no eager run']}** do not run eagerly on their tiny config"
        + (f", **{status['not measured']}** not measured yet." if status["not measured"] else "."),
        "",
    ]
    for kind in ("captured", "fails", "no eager run"):
        causes = Counter(cause(r) for r in rows if r["status"] == kind)
        if causes:
            lines += [f"{kind.capitalize()}, by cause:", ""]
            lines += [f"- {n}: {c}" for c, n in causes.most_common()]
            lines.append("")
    lines += [
        "| model type | result | parameters kept (middle tap) | build (s) | reason |",
        "|---|---|---:|---:|---|",
    ]
    for r in rows:
        kept = f"{r['kept']:,} of {r['total']:,}" if r.get("kept") is not None else ""
        build = f"{r['build_s']:.2f}" if r.get("build_s") is not None else ""
        reason = r["reason"].replace("|", "\\|").replace("`", "'")
        lines.append(f"| `{r['type']}` | {r['status']} | {kept} | {build} | {reason} |")
    return "\n".join([*lines, "", END])


def write(rows: list[dict[str, Any]], doc: Path = DOC) -> None:
    """Replace the generated part of ``doc`` with ``render(rows)``."""
    text = doc.read_text(encoding="utf-8")
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    doc.write_text(text[:start] + render(rows) + text[stop:], encoding="utf-8")


def read_table(doc: Path = DOC) -> dict[str, tuple[str, str]]:
    """What the generated table says: ``{type: (result, parameters kept)}``."""
    text = doc.read_text(encoding="utf-8")
    part = text[text.index(BEGIN) : text.index(END)]
    found = {}
    for line in part.splitlines():
        m = _ROW.match(line)
        if m:
            found[m["type"]] = (m["status"], m["kept"])
    return found


def load(paths: list[Path]) -> list[dict[str, Any]]:
    """Survey rows from JSON-lines files, a later line (a rerun) winning; a model type with no
    row gets a ``not measured`` one."""
    from support.hf_zoo import model_types

    latest: dict[str, dict[str, Any]] = {}
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                latest[row["type"]] = row
    for name in model_types():
        latest.setdefault(name, {**_UNMEASURED, "type": name})
    return list(latest.values())


_UNMEASURED = {
    "status": "not measured",
    "reason": "the survey stopped before this type: make zoo-hf resumes it",
    "bitwise": None,
    "kept": None,
    "total": None,
    "build_s": None,
    "eager": False,
}


if __name__ == "__main__":  # python -m support.hf_table SURVEY.jsonl [MORE.jsonl ...]
    write(load([Path(p) for p in sys.argv[1:]]))
