"""extract_dataset and open_features: contents, options, resuming rules, bad input, the CLI."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader, Dataset

import fxtap
from fxtap.cli import main
from fxtap.dataset import _store
from fxtap.errors import InputShapeError, InvalidArgumentError, OutputPathError
from support.dataset import image_folder, tiny_model, tree

NODES = ["conv2", "fc"]


def reference(model, dataset, batch_size):
    """A plain loop over the extractor in eval mode, without the job."""
    extractor = fxtap.create_feature_extractor(model, NODES).eval()
    out: dict[str, list[torch.Tensor]] = {k: [] for k in NODES}
    labels = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            values = extractor(torch.stack([x for x, _ in items]))
            for k in NODES:
                out[k].append(values[k])
            labels += [y for _, y in items]
    return {k: torch.cat(v) for k, v in out.items()}, torch.tensor(labels)


def test_store_equals_a_plain_loop_over_the_extractor(tmp_path, untouched):
    model = tiny_model()
    dataset = image_folder(tmp_path / "images")
    want, labels = reference(model, dataset, 4)
    model.train()
    with untouched(model):
        result = fxtap.extract_dataset(
            model,
            dataset,
            tmp_path / "out",
            return_nodes=NODES,
            batch_size=4,
            chunk_size=8,
            progress=False,
        )
    assert (result.num_samples, result.computed, result.num_chunks) == (20, 20, 3)
    feats = fxtap.open_features(tmp_path / "out")
    for k in NODES:
        assert torch.equal(feats.tensor(k), want[k]), k
        # numpy users read the same values with zarr alone
        plain = zarr.open_group(tmp_path / "out", mode="r")[k][:]
        assert np.array_equal(plain, want[k].numpy())
    assert torch.equal(torch.from_numpy(feats.labels[:]), labels)
    assert list(feats.ids[:3]) == ["cat/0000.png", "cat/0002.png", "cat/0004.png"]
    meta = feats.metadata
    assert meta["complete"] and meta["job"]["mode"] == "eval"
    assert meta["job"]["requested_nodes"] == NODES
    assert meta["job"]["resolved_nodes"] == {"conv2": "conv2", "fc": "fc"}
    assert meta["versions"] == {"fxtap": fxtap.__version__, "torch": torch.__version__}
    assert "ToDtype" in meta["job"]["data"]["transform"]
    assert feats.skipped == () and bool(feats.valid[:].all())
    # an extractor given directly keeps its mode; a finished job is not recomputed
    extractor = fxtap.create_feature_extractor(model, NODES).train()
    again = fxtap.extract_dataset(
        extractor, dataset, tmp_path / "out2", batch_size=4, progress=False
    )
    assert extractor.training and again.computed == 20
    assert torch.equal(fxtap.open_features(tmp_path / "out2").tensor("fc"), want["fc"])
    redo = fxtap.extract_dataset(
        extractor, dataset, tmp_path / "out2", batch_size=4, progress=False
    )
    assert redo.computed == 0 and redo.chunks_before == redo.num_chunks


def test_pool_and_dtype(tmp_path):
    model = tiny_model()
    dataset = image_folder(tmp_path / "images", count=8)
    want, _ = reference(model, dataset, 4)
    for pool, fn in (("avg", lambda t: t.mean((2, 3))), ("max", lambda t: t.amax((2, 3)))):
        out = tmp_path / pool
        fxtap.extract_dataset(
            model,
            dataset,
            out,
            return_nodes=NODES,
            batch_size=4,
            pool=pool,
            dtype="float16",
            progress=False,
        )
        feats = fxtap.open_features(out)
        assert torch.equal(feats.tensor("conv2"), fn(want["conv2"]).half())
        assert torch.equal(feats.tensor("fc"), want["fc"].half())
    fxtap.extract_dataset(
        model,
        dataset,
        tmp_path / "bf",
        return_nodes=NODES,
        batch_size=4,
        dtype=torch.bfloat16,
        pool={"conv2": "avg"},
        progress=False,
    )
    feats = fxtap.open_features(tmp_path / "bf")
    assert feats.tensor("fc").dtype == torch.bfloat16
    assert torch.equal(feats.tensor("fc"), want["fc"].bfloat16())
    assert torch.equal(
        feats.tensor("conv2", slice(2, 5)), want["conv2"].mean((2, 3)).bfloat16()[2:5]
    )
    with pytest.raises(InvalidArgumentError, match="token sequences"):
        fxtap.extract_dataset(
            model, dataset, tmp_path / "cls", return_nodes=NODES, pool="cls", progress=False
        )
    with pytest.raises(InvalidArgumentError, match="closest: 'avg'"):
        fxtap.extract_dataset(
            model, dataset, tmp_path / "x", return_nodes=NODES, pool="avgg", progress=False
        )


class Tokens(Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"input": torch.randn(5, 4, generator=g), "label": i % 2}


def test_token_pooling_and_dict_samples(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU())
    fxtap.extract_dataset(
        model,
        Tokens(),
        tmp_path / "t",
        return_nodes=["1"],
        pool="cls",
        batch_size=3,
        progress=False,
    )
    feats = fxtap.open_features(tmp_path / "t")
    with torch.no_grad():
        want = model(torch.stack([Tokens()[i]["input"] for i in range(6)]))[:, 0]
    assert torch.equal(feats.tensor("1"), want)
    assert feats.labels[:].tolist() == [0, 1, 0, 1, 0, 1]


def test_resuming_with_other_arguments_or_into_another_job_is_refused(tmp_path):
    model = tiny_model()
    dataset = image_folder(tmp_path / "images", count=8)
    out = tmp_path / "out"
    fxtap.extract_dataset(model, dataset, out, return_nodes=NODES, batch_size=4, progress=False)
    before = tree(out)
    with pytest.raises(InvalidArgumentError, match="batch_size is 4 there, 2 here"):
        fxtap.extract_dataset(model, dataset, out, return_nodes=NODES, batch_size=2, progress=False)
    with pytest.raises(
        InvalidArgumentError,
        match=r"holds another job: the weights differ.*--seed.*fxtap run FILE.fxtap.*--restart",
    ):
        fxtap.extract_dataset(
            tiny_model(seed=1), dataset, out, return_nodes=NODES, batch_size=4, progress=False
        )
    assert tree(out) == before  # nothing was touched
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(OutputPathError, match="holds no fxtap feature store"):
        fxtap.extract_dataset(
            model, dataset, tmp_path / "other", return_nodes=NODES, progress=False
        )
    # resume=False erases the old job and starts over
    fxtap.extract_dataset(
        model, dataset, out, return_nodes=NODES, batch_size=2, resume=False, progress=False
    )
    assert fxtap.open_features(out).metadata["job"]["batch_size"] == 2
    with pytest.raises(InvalidArgumentError, match="holds no fxtap feature store"):
        fxtap.open_features(tmp_path / "other")


def test_corrupt_image_fails_naming_the_file_or_is_skipped(tmp_path):
    model = tiny_model()
    dataset = image_folder(tmp_path / "images", count=12)
    bad = tmp_path / "images" / "dog" / "0005.png"
    bad.write_bytes(b"not a png")
    index = [p for p, _ in dataset.samples].index(str(bad))
    with pytest.raises(InvalidArgumentError, match=r"0005\.png.*skip_bad=True"):
        fxtap.extract_dataset(
            model, dataset, tmp_path / "a", return_nodes=NODES, batch_size=4, progress=False
        )
    with pytest.warns(UserWarning, match=f"skipped sample {index}"):
        fxtap.extract_dataset(
            model,
            dataset,
            tmp_path / "a",
            return_nodes=NODES,
            batch_size=4,
            skip_bad=True,
            progress=False,
        )
    feats = fxtap.open_features(tmp_path / "a")
    assert feats.skipped == (index,) and not feats.valid[index] and feats.labels[index] == -1
    assert not feats["fc"][index].any()
    # the other samples are what the model gives them, in their batches
    extractor = fxtap.create_feature_extractor(model, NODES).eval()
    first = [i for i in range(4 * (index // 4), 4 * (index // 4) + 4) if i != index]
    with torch.no_grad():
        want = extractor(torch.stack([dataset[i][0] for i in first]))["fc"]
    assert torch.equal(feats.tensor("fc", first), want)


class Ragged(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.zeros(3, 16, 16 if i != 2 else 14)


def test_shapes_that_differ_within_a_batch(tmp_path):
    with pytest.raises(
        InputShapeError, match=r"sample 2 has shape 3x16x14 .* 3x16x16.*batch_size=1"
    ):
        fxtap.extract_dataset(
            tiny_model(), Ragged(), tmp_path / "r", return_nodes=NODES, batch_size=4, progress=False
        )


def test_values_beyond_the_dtype(tmp_path):
    dataset = image_folder(tmp_path / "images", count=4)
    with pytest.raises(
        InvalidArgumentError, match=r"tap '\w+' has values up to .*float16.*bfloat16"
    ):
        fxtap.extract_dataset(
            tiny_model(scale=1e6),
            dataset,
            tmp_path / "o",
            return_nodes=NODES,
            dtype="float16",
            progress=False,
        )


def test_full_disk_is_a_clean_error_and_the_store_resumes(tmp_path, monkeypatch):
    model = tiny_model()
    dataset = image_folder(tmp_path / "images", count=16)
    kwargs = {"return_nodes": NODES, "batch_size": 4, "chunk_size": 4, "progress": False}
    fxtap.extract_dataset(model, dataset, tmp_path / "ref", **kwargs)
    real = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) > 24:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(_store.os, "replace", replace)
    with pytest.raises(OutputPathError, match=r"the disk is full.*run the same job again"):
        fxtap.extract_dataset(model, dataset, tmp_path / "out", **kwargs)
    monkeypatch.setattr(_store.os, "replace", real)
    assert not list((tmp_path / "out").rglob("*.partial"))
    result = fxtap.extract_dataset(model, dataset, tmp_path / "out", **kwargs)
    assert 0 < result.chunks_before < result.num_chunks
    assert tree(tmp_path / "out") == tree(tmp_path / "ref")


def test_bad_arguments(tmp_path):
    model = tiny_model()
    dataset = image_folder(tmp_path / "images", count=4)
    with pytest.raises(InvalidArgumentError, match="needs return_nodes="):
        fxtap.extract_dataset(model, dataset, tmp_path / "o", progress=False)
    with pytest.raises(InvalidArgumentError, match="multiple of batch_size=4"):
        fxtap.extract_dataset(
            model,
            dataset,
            tmp_path / "o",
            return_nodes=NODES,
            batch_size=4,
            chunk_size=6,
            progress=False,
        )
    with pytest.raises(InvalidArgumentError, match=r"dtype='float8'.*closest"):
        fxtap.extract_dataset(
            model, dataset, tmp_path / "o", return_nodes=NODES, dtype="float8", progress=False
        )
    with pytest.raises(InvalidArgumentError, match="reserved"):
        fxtap.extract_dataset(
            model, dataset, tmp_path / "o", return_nodes={"fc": "labels"}, progress=False
        )
    with pytest.warns(UserWarning, match="shuffles"):
        fxtap.extract_dataset(
            model,
            DataLoader(dataset, batch_size=2, shuffle=True),
            tmp_path / "dl",
            return_nodes=NODES,
            progress=False,
        )
    assert fxtap.open_features(tmp_path / "dl").metadata["job"]["batch_size"] == 2


def test_open_features_refuses_an_unfinished_job(tmp_path):
    model = tiny_model()
    dataset = image_folder(tmp_path / "images", count=4)
    fxtap.extract_dataset(model, dataset, tmp_path / "o", return_nodes=NODES, progress=False)
    group = zarr.open_group(tmp_path / "o", mode="r+")
    group.attrs["fxtap"] = {**group.attrs["fxtap"], "complete": False}
    with pytest.raises(InvalidArgumentError, match=r"has not finished.*partial=True"):
        fxtap.open_features(tmp_path / "o")
    assert fxtap.open_features(tmp_path / "o", partial=True)["fc"].shape == (4, 3)


MODEL_FILE = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
"""


def test_cli_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image_folder(tmp_path / "images", count=6)
    (tmp_path / "net.py").write_text(MODEL_FILE)
    argv = [
        "run",
        "net.py:build",
        "--nodes",
        "1=act",
        "3",
        "--data",
        "imagefolder:images",
        "--out",
        "feats",
        "--pool",
        "max",
        "--batch-size",
        "2",
        "--num-workers",
        "1",
        "--crop",
        "16",
        "--resize",
        "16",
        "--dtype",
        "float16",
        "--no-progress",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "act  <- 1  6x4 float16" in out and "stored in feats with labels and ids" in out
    feats = fxtap.open_features("feats")
    assert feats.metadata["job"]["model"] == "net.py:build"
    assert "CenterCrop(size=(16, 16))" in feats.metadata["job"]["data"]["transform"]
    assert main(argv) == 0  # resumes a finished job: nothing to do
    assert main([*argv[:-1], "--batch-size", "3"]) == 1
    assert "batch_size is 2 there, 3 here" in capsys.readouterr().err
    assert main([*argv[:6], "imagefolder:nowhere", *argv[7:]]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["run", "net.py:build", "--nodes", "1", "--data", "images", "--out", "x"]) == 1
    assert "KIND:VALUE" in capsys.readouterr().err


def test_the_docs_python_example_runs_twice(tmp_path, monkeypatch, capsys):
    """A user runs the example, then runs it again: the second run resumes, computing nothing."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "dataset.md").read_text()
    code = re.search(r"```python\n(.*?)```", page, re.S).group(1)  # type: ignore[union-attr]
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        exec(compile(code, "docs/dataset.md", "exec"), {})  # the docs' own code
    assert capsys.readouterr().out.splitlines()[-1] == "0 8"
