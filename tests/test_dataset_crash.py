"""SIGKILL at many points, then resume: the store is bitwise the uninterrupted one; torchrun too.

Kills happen inside the single function that writes files (half a temporary file written, or
just after a file is in place), in a forked child. FXTAP_THOROUGH=1 kills at 20 random points.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from dataset_helpers import image_folder, tiny_model, tree

import fxtap
from fxtap.dataset import _store

NODES = ["conv2", "fc"]
KW = {"return_nodes": NODES, "batch_size": 3, "chunk_size": 6, "progress": False}


def _count_writes(monkeypatch, model, dataset, out) -> int:
    calls = []
    real = _store.write_file

    def counting(path, data):
        calls.append(path)
        real(path, data)

    monkeypatch.setattr(_store, "write_file", counting)
    fxtap.extract_dataset(model, dataset, out, **KW)
    monkeypatch.setattr(_store, "write_file", real)
    return len(calls)


def _killed_run(model, dataset, out: Path, at: int, mid: bool) -> int:
    pid = os.fork()
    if pid == 0:  # the child: die at write number `at`
        try:
            calls = [0]
            real = _store.write_file

            def dying(path, data):
                calls[0] += 1
                if calls[0] == at:
                    if mid:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.with_name(path.name + ".x.partial").write_bytes(data[: len(data) // 2])
                    else:
                        real(path, data)
                    os.kill(os.getpid(), signal.SIGKILL)
                real(path, data)

            _store.write_file = dying
            fxtap.extract_dataset(model, dataset, out, **KW)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    return status


def test_sigkill_at_many_points_then_resume_gives_the_same_store(tmp_path, monkeypatch):
    model = tiny_model()
    dataset = image_folder(tmp_path / "images", count=16)
    total = _count_writes(monkeypatch, model, dataset, tmp_path / "ref")
    want = tree(tmp_path / "ref")
    if os.environ.get("FXTAP_THOROUGH"):
        rng = random.Random(0)
        points = [(rng.randrange(1, total + 1), rng.random() < 0.5) for _ in range(20)]
    else:  # creation, ids, the first chunk, a middle chunk's marker, the completion
        points = [
            (1, True),
            (9, False),
            (14, True),
            (total // 2, False),
            (total, True),
            (total, False),
        ]
    for i, (at, mid) in enumerate(points):
        out = tmp_path / f"run{i}"
        status = _killed_run(model, dataset, out, at, mid)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (at, status)
        # a second crash on the resumed run, later on, for some points
        if i % 2 and at + 3 <= total:
            _killed_run(model, dataset, out, 3, not mid)
        fxtap.extract_dataset(model, dataset, out, **KW)
        assert tree(out) == want, f"killed at write {at} (mid-write: {mid})"


SCRIPT = """
import sys, torch
sys.path[:0] = [{root!r}, {tests!r}]
torch.set_num_threads(1)
import fxtap
from dataset_helpers import image_folder, tiny_model, TRANSFORM
import torchvision
dataset = torchvision.datasets.ImageFolder({images!r}, transform=TRANSFORM)
result = fxtap.extract_dataset(tiny_model(), dataset, {out!r}, return_nodes={nodes!r},
                               batch_size=3, chunk_size=6, progress=False)
with open({out!r} + f".rank{{result.rank}}", "w") as f:
    f.write(f"rank {{result.rank}} of {{result.world_size}} computed {{result.computed}}")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_process_and_a_job_script(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The single-process store in ``one``; a script (and its environment) that writes ``two``."""
    dataset = image_folder(tmp_path / "images", count=16)
    fxtap.extract_dataset(tiny_model(), dataset, tmp_path / "one", **KW)
    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(SCRIPT).format(
            root=str(root),
            tests=str(root / "tests"),
            images=str(tmp_path / "images"),
            out=str(tmp_path / "two"),
            nodes=NODES,
        )
    )
    return script, {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}


def test_torchrun_two_ranks_equal_one_process(tmp_path):
    script, env = _one_process_and_a_job_script(tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        str(script),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    said = [(tmp_path / f"two.rank{r}").read_text() for r in (0, 1)]
    assert said == ["rank 0 of 2 computed 10", "rank 1 of 2 computed 6"]
    assert tree(tmp_path / "two") == tree(tmp_path / "one")
    feats = fxtap.open_features(tmp_path / "two")
    assert feats.metadata["complete"] and feats["fc"].shape == (16, 3)
    assert torch.equal(feats.tensor("fc"), fxtap.open_features(tmp_path / "one").tensor("fc"))


def test_two_nodes_on_a_shared_folder_equal_one_process(tmp_path):
    """Two launchers, as on two hosts (``--nnodes 2 --node-rank 0|1``), one rank each."""
    script, env = _one_process_and_a_job_script(tmp_path)
    port = str(_free_port())
    launchers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node-rank",
                str(node),
                "--nproc-per-node",
                "1",
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                port,
                str(script),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    said_by_launchers = [p.communicate(timeout=120)[0] for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], said_by_launchers
    said = [(tmp_path / f"two.rank{r}").read_text() for r in (0, 1)]
    assert said == ["rank 0 of 2 computed 10", "rank 1 of 2 computed 6"]
    assert tree(tmp_path / "two") == tree(tmp_path / "one")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_resumed_job_computes_only_what_is_missing(tmp_path):
    model = tiny_model()
    dataset = image_folder(tmp_path / "images", count=16)
    # die right after chunk 1's marker: chunks 0 and 1 are done
    status = _killed_run(model, dataset, tmp_path / "o", 21, False)
    assert os.WIFSIGNALED(status)
    result = fxtap.extract_dataset(model, dataset, tmp_path / "o", **KW)
    assert result.chunks_before >= 1 and result.computed == 16 - 6 * result.chunks_before
