"""``fxtap run`` as a separate program, killed (SIGKILL) or stopped (SIGINT) from outside, then
run again with the same command: the store ends bitwise equal to an uninterrupted run.

The stopped runs are programs (``python -m fxtap run ...``); the reference and most resumes
run ``main([...])`` in this process, which is quicker and mixes chunks of two processes.

The model is a random-weight spec (no seed inside the factory: only ``--seed`` makes two runs
the same model). The dataset pauses once at a chosen sample, so each stop lands at a known
point of the job: the test waits for the pause, and for some points also polls the store
until every chunk before that sample is recorded done, then signals the process. At the other
points the background writer may be in the middle of a chunk when the kill lands.
FXTAP_THOROUGH=1 adds more points.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fxtap
from fxtap.cli import main
from support.dataset import job_files, tree

ROOT = Path(__file__).resolve().parents[1]

MODEL_FILE = """
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.act(self.conv(x))).flatten(1)

def build():
    return Net()
"""

# 200 small tensors. A file "pause" holding AT makes loading sample AT write "paused" and wait
# for a file "go" (once: "pause" is removed), so the job stops at a sample the test chose.
DATA_FILE = """
import os, time, torch
from torch.utils.data import Dataset

class Numbers(Dataset):
    def __len__(self):
        return 200

    def __getitem__(self, i):
        if os.path.exists("pause") and int(open("pause").read()) == i:
            os.remove("pause")
            open("paused", "w").close()
            while not os.path.exists("go"):
                time.sleep(0.01)
        return torch.rand(3, 10, 10, generator=torch.Generator().manual_seed(i)), i % 3

def make():
    return Numbers()
"""

ARGS = ["run", "net.py:build", "--nodes", "act", "pool=embedding", "--data", "data.py:make"]
ARGS += ["--batch-size", "2", "--num-workers", "0", "--no-progress"]
CHUNK = 4  # 200 samples / 64, in whole batches of 2: the default chunk size


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return job_files(tmp_path, MODEL_FILE, DATA_FILE)


def _start(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "fxtap", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _wait_for(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _done_chunks(out: Path) -> int:
    """Chunks recorded done in the store: the files of its ``checksums`` array (one per chunk)."""
    folder = out / "checksums" / "c"
    return sum(1 for p in folder.iterdir() if p.stat().st_size > 0) if folder.is_dir() else 0


def _paused_run(
    out: str, at: int, *, drained: bool = True, flags: tuple[str, ...] = ()
) -> subprocess.Popen[str]:
    """Start the job and return once it waits at sample ``at`` (after the chunks before it are
    recorded done, when ``drained``)."""
    for name in ("paused", "go"):
        Path(name).unlink(missing_ok=True)
    Path("pause").write_text(str(at))
    proc = _start(*ARGS, *flags, "--out", out)
    _wait_for(lambda: Path("paused").exists() or proc.poll() is not None, f"sample {at}")
    assert proc.poll() is None, _finish(proc)
    if drained:
        _wait_for(lambda: _done_chunks(Path(out)) >= at // CHUNK, f"{at // CHUNK} chunks")
    return proc


def _kill(out: str, at: int, *, drained: bool) -> None:
    proc = _paused_run(out, at, drained=drained)
    proc.send_signal(signal.SIGKILL)
    code, err = _finish(proc)
    assert code == -signal.SIGKILL, err


def test_sigkill_at_five_points_then_the_same_command_resumes(files):
    assert main([*ARGS, "--out", "ref"]) == 0
    want = tree(Path("ref"))
    assert fxtap.open_features("ref").metadata["job"]["chunk_size"] == CHUNK
    # the first batch, a kill once the chunks before are done, one while the writer may be
    # busy, the last chunk, and the last sample
    points = [(1, False), (57, True), (100, False), (163, True), (199, False)]
    if os.environ.get("FXTAP_THOROUGH"):
        points += [(at, drained) for at in (3, 4, 31, 128, 196) for drained in (False, True)]
    for i, (at, drained) in enumerate(points):
        out = f"o{i}"
        _kill(out, at, drained=drained)
        if drained:
            assert fxtap.open_features(out, partial=True, verify=True) is not None
        if at == 57:  # the resumed run is killed in turn, later on
            _kill(out, 130, drained=False)
        assert main([*ARGS, "--out", out]) == 0, at
        assert tree(Path(out)) == want, f"killed at sample {at}"


def test_sigint_from_outside_stops_and_the_printed_command_resumes(files):
    assert main([*ARGS, "--out", "ref"]) == 0
    proc = _paused_run("o", 100, drained=True)
    proc.send_signal(signal.SIGINT)
    Path("go").touch()
    code, err = _finish(proc)
    lines = err.strip().splitlines()
    assert code == 130 and len(lines) == 1, err
    assert lines[0].startswith("fxtap: interrupted: stored 100 of 200 samples in 'o'")
    command = shlex.split(lines[0].split("resume with: ")[1])
    assert command[:3] == ["fxtap", "run", "net.py:build"] and "--restart" not in command
    code, err = _finish(_start(*command[1:]))  # the printed command, as `python -m fxtap ...`
    assert code == 0, err
    assert tree(Path("o")) == tree(Path("ref"))


@pytest.mark.skipif(not os.environ.get("FXTAP_THOROUGH"), reason="compiles in 3 processes")
def test_a_compiled_job_killed_resumes_bitwise_in_a_new_process(files):
    """torch.compile's kernels are the same in every process: a resumed --compile job's store
    is bitwise the uninterrupted --compile store."""
    code, err = _finish(_start(*ARGS, "--compile", "--out", "ref"))
    assert code == 0, err
    proc = _paused_run("o", 100, flags=("--compile",))
    proc.send_signal(signal.SIGKILL)
    assert _finish(proc)[0] == -signal.SIGKILL
    code, err = _finish(_start(*ARGS, "--compile", "--out", "o"))
    assert code == 0, err
    assert tree(Path("o")) == tree(Path("ref"))


def test_a_saved_extractor_killed_resumes_to_the_same_store(files):
    """``fxtap run FILE.fxtap``: the file pins the weights, so a killed job resumes too."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("saved_net", files / "net.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(5)
    fxtap.save(fxtap.create_feature_extractor(module.build(), ["act", "pool"]), "net.fxtap")
    saved = ["run", "net.fxtap", *ARGS[5:]]
    assert main([*saved, "--out", "ref"]) == 0
    for name in ("paused", "go"):
        Path(name).unlink(missing_ok=True)
    Path("pause").write_text("100")
    proc = _start(*saved, "--out", "o")
    _wait_for(lambda: Path("paused").exists() or proc.poll() is not None, "sample 100")
    proc.send_signal(signal.SIGKILL)
    assert _finish(proc)[0] == -signal.SIGKILL
    assert main([*saved, "--out", "o"]) == 0
    assert tree(Path("o")) == tree(Path("ref"))
    assert fxtap.open_features("o").metadata["job"]["model"] == "net.fxtap"
