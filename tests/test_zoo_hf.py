"""The generated Hugging Face zoo: AutoModel types on tiny configs, pruned and exact.

``make test`` runs ``hf_zoo.SAMPLE`` (27 architectures across text, vision, audio,
encoder-decoder and multimodal families); ``FXTAP_THOROUGH=1`` runs every type transformers
maps to ``AutoModel``. Each model gets a leaf tap in the middle, the input of a later module
(the value a functional op such as a residual add produced) and ``:output``; values are compared
bitwise with forward hooks on the unmodified model in eval and train mode (same seed), and so
are the gradients of each tap (``support.hf_survey.measure``). The result must be
the one docs/zoo.md's generated table gives for that type (``make zoo-hf`` regenerates it), and
every type of the sample is pruned and exact, except those in ``KNOWN``.
"""

from __future__ import annotations

import os

import pytest

from support.hf_survey import measure
from support.hf_table import read_table
from support.hf_zoo import SAMPLE, model_types

THOROUGH = os.environ.get("FXTAP_THOROUGH") == "1"
TYPES = model_types() if THOROUGH else list(SAMPLE)

#: Types of the sample that fxtap does not prune exactly, each with its reason (the table's too).
KNOWN: dict[str, str] = {}


@pytest.mark.hf
@pytest.mark.slow
@pytest.mark.parametrize("model_type", TYPES)
def test_generated_model_is_pruned_and_exact(model_type: str) -> None:
    row = measure(model_type)
    table = read_table()
    assert model_type in table, f"{model_type!r} has no row in docs/zoo.md: run make zoo-hf"
    kept = f"{row['kept']:,} of {row['total']:,}" if row["kept"] is not None else ""
    assert table[model_type] == (row["status"], kept), (
        f"docs/zoo.md says {table[model_type]} for {model_type!r}, the test measured "
        f"{(row['status'], kept)} ({row['reason']}): run make zoo-hf"
    )
    if model_type in KNOWN:
        assert row["status"] != "pruned", f"{model_type!r} is pruned now: remove it from KNOWN"
        assert KNOWN[model_type] in row["reason"]
    elif row["status"] == "no eager run" and model_type not in SAMPLE:
        pytest.skip(f"{model_type}: the tiny model does not run eagerly ({row['reason']})")
    elif row["status"] == "pruned" or model_type in SAMPLE:
        assert row["status"] == "pruned", f"{model_type}: {row['status']}: {row['reason']}"
        assert row["bitwise"] is True
        assert row["kept"] < row["total"], "nothing was pruned"


@pytest.mark.hf
def test_the_table_has_one_row_per_model_type() -> None:
    table = read_table()
    assert sorted(table) == model_types(), "docs/zoo.md is not the table of this transformers"
    assert all(table[t][0] == "pruned" for t in SAMPLE if t not in KNOWN)
