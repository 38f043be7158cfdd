"""``fxtap run`` as a new user meets it: random-weight specs resume, Ctrl-C keeps work and says
how to resume, bad input and full disks give one line in CLI words, before any work."""

from __future__ import annotations

import errno
import gc
import shlex
from pathlib import Path

import pytest

import fxtap
from fxtap import _extras
from fxtap.cli import main
from fxtap.dataset import _options, _store
from support.dataset import job_files, tree

# Random weights: no seed inside the factory, so only --seed makes two runs the same model.
MODEL_FILE = """
from torch import nn

class Net(nn.Module):
    def __init__(self, act="relu"):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.GELU() if act == "gelu" else nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.act(self.conv(x))).flatten(1)

def build(act="relu"):
    return Net(act)
"""

# 200 small tensors; a file "armed" makes loading one sample send a signal to this process once.
DATA_FILE = """
import os, signal, torch
from torch.utils.data import Dataset

class Numbers(Dataset):
    def __len__(self):
        return 200

    def __getitem__(self, i):
        if os.path.exists("armed"):  # "SIGNAL AT": send SIGNAL when sample AT is loaded
            with open("armed") as f:
                name, at = f.read().split()
            if i == int(at):
                os.remove("armed")
                os.kill(os.getpid(), getattr(signal, name))
        return torch.rand(3, 10, 10, generator=torch.Generator().manual_seed(i)), i % 3

def make():
    return Numbers()
"""

ARGV = ["run", "net.py:build", "--nodes", "act", "pool=embedding", "--data", "data.py:make"]
ARGV += ["--batch-size", "2", "--num-workers", "0", "--no-progress"]


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return job_files(tmp_path, MODEL_FILE, DATA_FILE)


def test_a_random_weight_spec_resumes_with_the_same_seed(files, capsys):
    assert main([*ARGV, "--out", "ref"]) == 0
    meta = fxtap.open_features("ref").metadata["job"]
    assert meta["seed"] == 0 and meta["chunk_size"] == 4  # 200 / 64 samples, whole batches
    Path("armed").write_text("SIGINT 100")
    assert main([*ARGV, "--out", "o"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "fxtap: interrupted: stored 100 of 200 samples in 'o'"
    )
    stored = sum(1 for r in fxtap.open_features("o", partial=True).valid[:] if r)
    assert stored >= 80  # at least 40 % kept
    command = err[0].split("resume with: ")[1]
    assert command.startswith("fxtap run net.py:build") and "--restart" not in command
    assert main(shlex.split(command)[1:]) == 0
    assert tree(Path("o")) == tree(Path("ref"))
    # four more points, a second interruption of a resumed job among them
    for at in (1, 57, 163, 199):
        Path("armed").write_text(f"SIGINT {at}")
        assert main([*ARGV, "--out", f"o{at}"]) == 130, at
        if at == 57:
            Path("armed").write_text("SIGINT 130")
            assert main([*ARGV, "--out", f"o{at}"]) == 130
        assert main([*ARGV, "--out", f"o{at}"]) == 0
        assert tree(Path(f"o{at}")) == tree(Path("ref")), at
    capsys.readouterr()
    # another seed is other weights: refused, saying why and what to do
    assert main([*ARGV, "--out", "o", "--seed", "1"]) == 1
    err = capsys.readouterr().err
    assert "seed is 0 there, 1 here" in err and "the weights differ" in err
    assert "--seed" in err and "fxtap run FILE.fxtap" in err and "--restart" in err
    # other code under the same class and weights: refused, naming the spec and the code
    assert main([*ARGV, "--out", "o", "--model-arg", "act=gelu"]) == 1
    err = capsys.readouterr().err
    assert "model is 'net.py:build' there, 'net.py:build --model-arg act=gelu' here" in err
    assert "the model's code differs" in err and "weights" not in err


@pytest.mark.parametrize("where", ["creation", "middle", "completion"])
def test_a_full_disk_is_one_line_and_the_job_resumes(files, capsys, monkeypatch, where):
    assert main([*ARGV, "--out", "ref"]) == 0
    real = _store.os.replace
    calls: list[Path] = []

    def replace(src, dst):
        calls.append(Path(dst))
        at_end = calls[-1] == Path("o/zarr.json") and len(calls) > 10
        full = {"creation": len(calls) == 1, "middle": len(calls) == 40, "completion": at_end}
        if full[where]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(_store.os, "replace", replace)
    assert main([*ARGV, "--out", "o"]) == 1
    monkeypatch.setattr(_store.os, "replace", real)
    gc.collect()  # asyncio tasks left pending would complain now
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("fxtap: error: cannot write 'o/") and "the disk is full" in err[0]
    assert "run the same job again to resume" in err[0]
    assert main([*ARGV, "--out", "o"]) == 0
    assert tree(Path("o")) == tree(Path("ref"))


def test_bad_input_is_one_line_before_the_model_is_built(files, capsys, monkeypatch):
    Path("images").mkdir()
    base = ["run", "net.py:build", "--nodes", "act", "--no-progress"]
    cases = {
        (
            "--device",
            "cuda:99",
            "--data",
            "fakedata:4",
            "--out",
            "a",
        ): "--device cuda:99 is not available",
        ("--data", "imagefolder:images", "--out", "images/feats"): "inside the data folder",
        ("--data", "fakedata:99999999999999", "--out", "a", "--resize", "16", "--crop", "16"): (
            "the store needs up to"
        ),
    }
    for extra, said in cases.items():
        assert main([*base, *extra]) == 1, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fxtap: error:") and said in err[0], err
    assert not Path("a").exists()
    assert main([*base, "--data", "fakedata:4", "--out", "a", "--std", "0,0,0"]) == 2
    assert "every standard deviation must be > 0" in capsys.readouterr().err
    # a batch larger than the data is one batch of the data, not a huge allocation
    small = ["--data", "fakedata:4", "--resize", "16", "--crop", "16"]
    assert main([*base, *small, "--out", "b", "--batch-size", "99999999999"]) == 0
    assert fxtap.open_features("b")["act"].shape == (4, 4, 14, 14)
    monkeypatch.setattr(_extras, "_importable", lambda name: name != "zarr")
    assert main([*base, *small, "--out", "c"]) == 1
    assert "pip install 'fxtap[dataset]'" in capsys.readouterr().err


def test_sigterm_keeps_the_finished_chunks_too(files, capsys):
    Path("armed").write_text("SIGTERM 100")
    assert main([*ARGV, "--out", "o"]) == 143
    assert "fxtap: interrupted: stored 100 of 200 samples" in capsys.readouterr().err
    assert main([*ARGV, "--out", "o"]) == 0  # the same command resumes
    assert fxtap.open_features("o", verify=True)["embedding"].shape == (200, 4, 1, 1)


def test_more_workers_than_cpus_warns():
    with pytest.warns(UserWarning, match=r"num_workers=100000 is more than the \d+ CPU"):
        _options.check_cpu_workers(100000)
