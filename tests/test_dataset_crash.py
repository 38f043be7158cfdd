"""SIGKILL at many points, then resume: the store is bitwise the uninterrupted one; torchrun too.

Kills happen inside the single function that writes files (half a temporary file written, or
just after a file is in place), in a forked child. FXTAP_THOROUGH=1 kills at 20 random points.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
import torchvision

import fxtap
from fxtap.cli import main
from fxtap.dataset import _store
from fxtap.dataset._spec import digest
from support.dataset import TRANSFORM, image_folder, tiny_model, tree

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
                        path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial").write_bytes(
                            data[: len(data) // 2]
                        )
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


# Each rank builds its model with its own seed: different random weights, as when every rank
# initialises at random. The job must run rank 0's weights everywhere.
SCRIPT = """
import os, sys, torch
sys.path[:0] = [{root!r}, {tests!r}]
torch.set_num_threads(1)
import fxtap
from support.dataset import image_folder, tiny_model, TRANSFORM
import torchvision
dataset = torchvision.datasets.ImageFolder({images!r}, transform=TRANSFORM)
model = tiny_model(seed=int(os.environ["RANK"]))
before = {{k: v.clone() for k, v in model.state_dict().items()}}
result = fxtap.extract_dataset(model, dataset, {out!r}, return_nodes={nodes!r},
                               batch_size=3, chunk_size=6, progress=False)
assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # not mutated
with open({out!r} + f".rank{{result.rank}}", "w") as f:
    f.write(f"rank {{result.rank}} of {{result.world_size}} computed {{result.computed_by_rank}}; "
            + result.summary().split(" in ")[0])
"""


def hooked(model, images: Path, batch_size: int) -> dict[str, torch.Tensor]:
    """Forward hooks on the unmodified model in eval mode: the taps of every batch."""
    dataset = torchvision.datasets.ImageFolder(str(images), transform=TRANSFORM)
    seen: dict[str, list[torch.Tensor]] = {k: [] for k in NODES}
    handles = [
        getattr(model, k).register_forward_hook(lambda m, a, out, k=k: seen[k].append(out))
        for k in NODES
    ]
    model.eval()
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            stop = min(start + batch_size, len(dataset))
            model(torch.stack([dataset[i][0] for i in range(start, stop)]))
    for h in handles:
        h.remove()
    return {k: torch.cat(v) for k, v in seen.items()}


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
    # counts are gathered: both ranks say 16 of 16, each rank's share is kept apart
    assert said == [
        f"rank {r} of 2 computed (10, 6); 16 of 16 samples done by 2 ranks" for r in (0, 1)
    ]
    # bitwise the single-process store of rank 0's model (seed 0), whose weights it records
    assert tree(tmp_path / "two") == tree(tmp_path / "one")
    feats = fxtap.open_features(tmp_path / "two", verify=True)
    assert feats.metadata["complete"] and feats["fc"].shape == (16, 3)
    assert feats.metadata["job"]["parameters_sha256"] == digest(tiny_model(seed=0))
    # and forward hooks on rank 0's model give the same values, batch by batch
    want = hooked(tiny_model(seed=0), tmp_path / "images", batch_size=3)
    for key in NODES:
        assert torch.equal(feats.tensor(key), want[key]), key


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
    assert said == [
        f"rank {r} of 2 computed (10, 6); 16 of 16 samples done by 2 ranks" for r in (0, 1)
    ]
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


# 16 random images; on rank 1 each sample takes 0.3 s to load, so rank 0 finishes its chunks
# (0 and 2: 10 samples) well before rank 1 finishes chunk 1 (6 samples).
SLOW_DATA = """
import os, time, torch
from torch.utils.data import Dataset

class Images(Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        if os.environ.get("RANK") == "1":
            time.sleep(0.3)
        return torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)), i % 2

def make():
    return Images()
"""


def test_torchrun_cli_random_weights_equals_one_process_and_the_bar_counts_every_rank(
    tmp_path, monkeypatch
):
    """``torchrun -m fxtap run torchvision:resnet18`` (random weights, ``--seed 0``) gives the
    single-process store bitwise, and hooks on one model; rank 0's bar counts all ranks."""
    monkeypatch.chdir(tmp_path)
    Path("data.py").write_text(SLOW_DATA)
    argv = ["run", "torchvision:resnet18", "--nodes", "layer1", "avgpool"]
    argv += ["--data", "data.py:make", "--batch-size", "3", "--chunk-size", "6"]
    argv += ["--num-workers", "0"]
    assert main([*argv, "--out", "one", "--no-progress"]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    cmd += ["-m", "fxtap", *argv, "--out", "two"]
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert tree(tmp_path / "two") == tree(tmp_path / "one")
    # the bar of rank 0 shows rank 0's 10 samples while rank 1 still loads, then all 16;
    # estimating all ranks as rank 0's count times 2 would show 6, 12, 16
    states = re.findall(r"\| *(\d+)/16 \[", done.stderr)
    assert "10" in states and states[-1] == "16", done.stderr
    assert states.index("10") < states.index("16")
    assert "fxtap: run 16 of 16 samples done by 2 ranks" in done.stderr
    # forward hooks on one resnet18 built with seed 0, batch by batch
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    seen: dict[str, list[torch.Tensor]] = {"layer1": [], "avgpool": []}
    for name, values in seen.items():
        model.get_submodule(name).register_forward_hook(lambda m, a, y, v=values: v.append(y))
    images = torch.stack(
        [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(16)]
    )
    with torch.no_grad():
        for start in range(0, 16, 3):
            model(images[start : start + 3])
    feats = fxtap.open_features("two", verify=True)
    for name, values in seen.items():
        assert torch.equal(feats.tensor(name), torch.cat(values)), name
