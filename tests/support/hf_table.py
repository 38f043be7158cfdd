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

__all__ = ["DOC", "cause", "read_table", "render", "write"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "zoo.md"
BEGIN, END = "<!-- zoo-hf: begin (generated) -->", "<!-- zoo-hf: end -->"
_ROW = re.compile(r"^\| `(?P<type>[^`]+)` \| (?P<status>[^|]+?) \| (?P<kept>[^|]*?) \|")

# (pattern on the reason, cause): the first match names the cause of a row that is not pruned.
_CAUSES = (
    (r"image tokens|image features|Image features|video tokens|audio tokens|placeholder", "needs multimodal placeholder tokens in input_ids"),
    (r"takes no input this builder knows|forward needs", "needs inputs the generator does not build"),
    (r"prediction_length|context_length|past_values", "time-series model: needs a forecasting config"),
    (r"Could not guess the data-dependent|data-dependent|GuardOnDataDependent", "torch.export: data-dependent control flow"),
    (r"Constraints violated|specializ", "torch.export: a dimension specialized"),
    (r"timeout|hang", "timed out"),
    (r"worker died", "crashed the process"),
    (r"not bitwise equal", "values differ from hooks"),
    (r"only \d+ leaf modules", "too few leaf modules to tap"),
)  # fmt: skip


def cause(row: dict[str, Any]) -> str:
    """The short cause of a row that is not pruned (grouped in the counts)."""
    reason = row["reason"]
    for pattern, label in _CAUSES:
        if re.search(pattern, reason):
            return label
    head = reason.split(":", 1)
    return head[0] if len(head) == 1 else f"{head[0]}: {head[1].strip()[:60]}"


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
        f"**{status['no eager run']}** do not run eagerly on their tiny config.",
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


if __name__ == "__main__":
    latest: dict[str, dict[str, Any]] = {}
    for line in Path(sys.argv[1]).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            latest[row["type"]] = row  # a later line (a rerun) wins
    write(list(latest.values()))
