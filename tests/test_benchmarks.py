"""The dataset benchmark runs end to end on a few images and reports every variant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_dataset_runs_on_a_few_images(tmp_path: Path) -> None:
    out = tmp_path / "dataset.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_dataset.py")]
    cmd += ["--images", "4", "--blocks", "2", "--batch-size", "2", "--json", str(out)]
    cmd += ["--options", "channels_last"]  # compile takes minutes on a CPU
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["taps"] for r in rows] == ["layer3", "avgpool (pooled)"]
    for row in rows:
        assert all(row[k] > 0 for k in ("job", "loop", "hooks", "channels_last"))
        assert len(row["channels_last/loop"]) == 2 and row["channels_last setup s"] > 0
        assert len(row["job/loop"]) == 2 and len(row["seconds"]["job"]) == 2
    assert "job/loop" in done.stdout and "layer3" in done.stdout
