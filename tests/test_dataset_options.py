"""The job's speed options, run for real: ``channels_last`` and ``compile`` (torch.compile with
inductor, which needs a C++ compiler on CPU). Each gives values within float32 rounding of eager,
the same on every run, so an interrupted job resumes bitwise; each is part of the job's identity.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal

import pytest
import torch
from torch.utils.data import Dataset

import fxtap
from fxtap.dataset import JobInterrupted
from fxtap.errors import InvalidArgumentError
from support.dataset import image_folder, tiny_model, tree

NODES = ["conv2", "fc"]
KW = {"batch_size": 4, "chunk_size": 4, "progress": False}


class Stopping(Dataset):
    """The images; loading sample ``stop_at`` sends SIGINT to this process once (as Ctrl-C)."""

    def __init__(self, images) -> None:
        self.images = images
        self.stop_at: int | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        if i == self.stop_at:
            self.stop_at = None
            os.kill(os.getpid(), signal.SIGINT)
        return self.images[i]


def test_channels_last_is_close_to_eager_the_same_every_run_and_part_of_the_job(
    tmp_path, untouched
):
    model = tiny_model()
    dataset = image_folder(tmp_path / "images", count=8)
    kw = {"return_nodes": NODES, "batch_size": 4, "chunk_size": 4, "progress": False}
    fxtap.extract_dataset(model, dataset, tmp_path / "eager", **kw)
    fxtap.extract_dataset(model, dataset, tmp_path / "cl", channels_last=True, **kw)
    fxtap.extract_dataset(model, dataset, tmp_path / "cl2", channels_last=True, **kw)
    assert model.conv1.weight.is_contiguous()  # the caller's model keeps its layout
    assert tree(tmp_path / "cl") == tree(tmp_path / "cl2")  # the same on every run
    eager, cl = fxtap.open_features(tmp_path / "eager"), fxtap.open_features(tmp_path / "cl")
    assert cl.metadata["job"]["channels_last"] and not eager.metadata["job"]["channels_last"]
    for key in NODES:
        torch.testing.assert_close(cl.tensor(key), eager.tensor(key), rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidArgumentError, match="channels_last is True there, False here"):
        fxtap.extract_dataset(model, dataset, tmp_path / "cl", **kw)
    # stopped in the second chunk and resumed: bitwise the uninterrupted channels-last store
    stopping = Stopping(dataset)
    stopping.stop_at = 5
    with pytest.raises(JobInterrupted):
        fxtap.extract_dataset(model, stopping, tmp_path / "o", channels_last=True, **kw)
    fxtap.extract_dataset(model, stopping, tmp_path / "o", channels_last=True, **kw)
    fxtap.extract_dataset(model, stopping, tmp_path / "cl4", channels_last=True, **kw)
    assert tree(tmp_path / "o") == tree(tmp_path / "cl4")
    # a model already in channels-last is run as it is (not copied), to the same store
    converted = copy.deepcopy(model).to(memory_format=torch.channels_last)
    with untouched(converted):
        fxtap.extract_dataset(converted, dataset, tmp_path / "cl3", channels_last=True, **kw)
    assert tree(tmp_path / "cl3") == tree(tmp_path / "cl")


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs g++")
def test_compile_is_close_to_eager_and_an_interrupted_job_resumes_bitwise(tmp_path):
    # NOTE: one extractor for every call, so that dynamo compiles its forward once per batch
    # shape in this process (a few seconds; about 15 s with an empty inductor cache).
    extractor = fxtap.create_feature_extractor(tiny_model(), NODES)
    data = Stopping(image_folder(tmp_path / "images", count=12))
    fxtap.extract_dataset(extractor, data, tmp_path / "eager", **KW)
    fxtap.extract_dataset(extractor, data, tmp_path / "c", compile=True, **KW)
    eager, compiled = (fxtap.open_features(tmp_path / n) for n in ("eager", "c"))
    assert compiled.metadata["job"]["compile"] and not eager.metadata["job"]["compile"]
    for key in NODES:  # within float32 rounding: inductor fuses and reorders sums
        torch.testing.assert_close(compiled.tensor(key), eager.tensor(key))
    # stopped in the second chunk, then resumed: bitwise the uninterrupted compiled store
    data.stop_at = 5
    with pytest.raises(JobInterrupted) as stopped:
        fxtap.extract_dataset(extractor, data, tmp_path / "o", compile=True, **KW)
    assert stopped.value.stored == 4
    again = fxtap.extract_dataset(extractor, data, tmp_path / "o", compile=True, **KW)
    assert (again.resumed, again.computed) == (4, 8)
    assert tree(tmp_path / "o") == tree(tmp_path / "c")
    assert extractor.training  # the caller's mode is restored (a new extractor trains)
    with pytest.raises(InvalidArgumentError, match="compile is True there, False here"):
        fxtap.extract_dataset(extractor, data, tmp_path / "c", **KW)
