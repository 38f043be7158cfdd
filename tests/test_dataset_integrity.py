"""A store that cannot be silently wrong: job identity, chunk checksums, symlinks, foreign files.

Each case that a resume once missed (other code, a renamed file, a deleted, cut or changed
chunk, a symlink) is refused or repaired, naming what differs, and never yields a complete
store that mixes two jobs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

import fxtap
from fxtap.cli import main
from fxtap.errors import InvalidArgumentError, OutputPathError
from support.dataset import image_folder, tiny_model, tree

NODES = ["conv2", "fc"]
KW = {"return_nodes": NODES, "batch_size": 2, "chunk_size": 4, "progress": False}


class ActNet(nn.Module):
    """The same class and weights whatever ``act`` is: only the code that runs differs."""

    def __init__(self, act: str = "relu") -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.GELU() if act == "gelu" else nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.conv(x))).flatten(1)


def _act_net(act: str) -> ActNet:
    torch.manual_seed(0)
    return ActNet(act)


def test_same_class_and_weights_with_other_code_is_refused(tmp_path):
    dataset = image_folder(tmp_path / "images", count=8)
    kw = {"return_nodes": ["act", "pool"], "batch_size": 2, "chunk_size": 4, "progress": False}
    fxtap.extract_dataset(_act_net("relu"), dataset, tmp_path / "o", **kw)
    before = tree(tmp_path / "o")
    with pytest.raises(InvalidArgumentError, match=r"the model's code differs .*\(code_sha256"):
        fxtap.extract_dataset(_act_net("gelu"), dataset, tmp_path / "o", **kw)
    assert tree(tmp_path / "o") == before


def test_a_renamed_file_is_another_job(tmp_path):
    image_folder(tmp_path / "images", count=8)
    dataset = image_folder(tmp_path / "images", count=8)
    fxtap.extract_dataset(tiny_model(), dataset, tmp_path / "o", **KW)
    before = tree(tmp_path / "o")
    os.rename(tmp_path / "images/cat/0002.png", tmp_path / "images/cat/0100.png")
    import torchvision

    renamed = torchvision.datasets.ImageFolder(
        str(tmp_path / "images"), transform=dataset.transform
    )
    with pytest.raises(InvalidArgumentError, match=r"data's files differ.*samples_sha256"):
        fxtap.extract_dataset(tiny_model(), renamed, tmp_path / "o", **KW)
    assert tree(tmp_path / "o") == before


@pytest.mark.parametrize("damage", ["delete", "truncate", "flip"])
def test_a_damaged_chunk_is_an_error_and_a_resume_repairs_it(tmp_path, damage, capsys):
    dataset = image_folder(tmp_path / "images", count=12)
    fxtap.extract_dataset(tiny_model(), dataset, tmp_path / "ref", **KW)
    fxtap.extract_dataset(tiny_model(), dataset, tmp_path / "o", **KW)
    want = tree(tmp_path / "ref")
    victim = tmp_path / "o" / "fc" / "c" / "1" / "0"
    data = victim.read_bytes()
    if damage == "delete":
        victim.unlink()
    elif damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    else:  # same size, other bytes: only a checksum sees it
        victim.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    if damage == "flip":
        fxtap.open_features(tmp_path / "o")  # a stat per file: sizes agree
    else:
        with pytest.raises(InvalidArgumentError, match=r"is damaged: chunk 1: file 'fc/c/1/0'"):
            fxtap.open_features(tmp_path / "o")
    with pytest.raises(InvalidArgumentError, match=r"damaged: chunk 1.*Run the same job again"):
        fxtap.open_features(tmp_path / "o", verify=True)
    assert main(["verify", str(tmp_path / "o")]) == 1
    assert "chunk 1: file 'fc/c/1/0'" in capsys.readouterr().err
    result = fxtap.extract_dataset(tiny_model(), dataset, tmp_path / "o", **KW)
    assert result.repaired == (1,) and result.computed == 4
    assert tree(tmp_path / "o") == want
    assert main(["verify", str(tmp_path / "o")]) == 0
    assert "complete store of 12 samples, 3 chunk(s) verified" in capsys.readouterr().out


def test_a_symlink_inside_the_store_is_refused(tmp_path):
    dataset = image_folder(tmp_path / "images", count=8)
    fxtap.extract_dataset(tiny_model(), dataset, tmp_path / "o", **KW)
    outside = tmp_path / "outside"
    outside.mkdir()
    chunks = tmp_path / "o" / "fc" / "c"
    os.rename(chunks, outside / "c")
    chunks.symlink_to(outside / "c")
    with pytest.raises(OutputPathError, match=r"fc/c' inside the feature store is a symbolic link"):
        fxtap.extract_dataset(tiny_model(), dataset, tmp_path / "o", **KW)
    with pytest.raises(OutputPathError, match="symbolic link"):
        fxtap.open_features(tmp_path / "o")


def test_folders_fxtap_did_not_write_are_never_cleared(tmp_path, capsys):
    """Someone's ``.partial`` files are not fxtap's leftovers, with or without --restart."""
    dataset = image_folder(tmp_path / "images", count=4)
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "movie.mkv.partial").write_bytes(b"movie")
    (mine / "sub" / "backup.tar.partial").write_bytes(b"backup")
    before = tree(mine)
    for resume in (True, False):
        with pytest.raises(OutputPathError, match=r"holds no fxtap feature store.*deletes only"):
            fxtap.extract_dataset(tiny_model(), dataset, mine, resume=resume, **KW)
        assert tree(mine) == before
    argv = ["run", "x.py:f", "--nodes", "a", "--data", "imagefolder:images", "--out", str(mine)]
    assert main([*argv, "--restart"]) == 1
    assert tree(mine) == before
    # --restart on a store clears fxtap's files and keeps a file someone added
    fxtap.extract_dataset(tiny_model(), dataset, tmp_path / "o", **KW)
    (tmp_path / "o" / "notes.txt").write_text("mine")
    with pytest.raises(OutputPathError, match=r"'notes.txt'"):
        fxtap.extract_dataset(tiny_model(), dataset, tmp_path / "o", resume=False, **KW)
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["notes.txt"]


def test_a_store_written_by_another_format_is_not_opened(tmp_path):
    import zarr

    group = zarr.open_group(tmp_path / "old", mode="w")
    group.attrs["fxtap"] = {"format": 1, "complete": True, "job": {}, "taps": {}}
    group.create_array("chunks_done", shape=(2,), dtype="uint8")
    with pytest.raises(InvalidArgumentError, match="of format 1, not 2"):
        fxtap.open_features(tmp_path / "old")
    dataset = image_folder(tmp_path / "images", count=4)
    with pytest.raises(InvalidArgumentError, match=r"format 1, written by another.*--restart"):
        fxtap.extract_dataset(tiny_model(), dataset, tmp_path / "old", **KW)
    fxtap.extract_dataset(tiny_model(), dataset, tmp_path / "old", resume=False, **KW)
    assert fxtap.open_features(tmp_path / "old", verify=True)["fc"].shape == (4, 3)


def test_run_a_saved_extractor_and_resume_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image_folder(Path("images"), count=6)
    torch.manual_seed(3)
    fxtap.save(fxtap.create_feature_extractor(ActNet(), ["act"]), "net.fxtap")
    argv = ["run", "net.fxtap", "--data", "imagefolder:images", "--out", "feats"]
    argv += ["--resize", "16", "--crop", "16", "--batch-size", "2", "--no-progress"]
    assert main(argv) == 0
    assert "act  <- act  6x4x14x14 float32" in capsys.readouterr().out
    before = tree(Path("feats"))
    assert main(argv) == 0  # a saved extractor pins the weights: the job is the same
    assert tree(Path("feats")) == before
    assert main([*argv, "--nodes", "act"]) == 1
    assert "saved extractor, which has its taps; drop --nodes" in capsys.readouterr().err
