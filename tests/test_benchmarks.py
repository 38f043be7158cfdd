"""The dataset and edit benchmarks run end to end on small inputs and report every variant."""

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


def test_bench_edit_runs_on_a_small_input(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_edit.py")]
    cmd += ["--size", "64", "--rounds", "1", "--min-run-time", "0.01", "--json"]
    cmd += ["--cuts", "layer2", "layer4.0", "--clock", "cpu", "--stages", "--pairs", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    (written,) = tmp_path.glob("bench_edit-*.json")
    report = json.loads(written.read_text())
    assert report["same"] is True  # the edited graph equals the hooked model
    assert report["clock"] == "cpu"
    variants = [r["variant"] for r in report["rows"]]
    assert variants[:4] == [
        "model",
        "edited graph (Scale at layer3)",
        "graph with an Identity edit",
        "forward hook (Scale at layer3)",
    ]
    cuts = report["cuts"]
    assert list(cuts) == ["layer2", "layer4.0"]
    assert cuts["layer2"]["boundary"] == ["layer2.3.relu_2"]
    # the later the cut, the smaller the tail's FLOP share
    assert 0 < cuts["layer4.0"]["tail_flop_share"] < cuts["layer2"]["tail_flop_share"] < 1
    for info in cuts.values():
        keys = ("tail_time_share", "eager_suffix_share", "head_share", "paired_tail_over_eager")
        assert all(info[k] > 0 for k in keys)
    assert "| layer4.0 |" in done.stdout and "tail / eager suffix" in done.stdout
    stages = report["stages"]
    assert list(stages) == ["stem", "layer1", "layer2", "layer3", "layer4", "avgpool + fc"]
    assert abs(sum(s["flop_share"] for s in stages.values()) - 1) < 1e-6
    assert all(s["gflop_per_s"] > 0 for s in stages.values())
