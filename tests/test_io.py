"""Tests of fxtap._io: the one atomic writer behind every file fxtap writes."""

from __future__ import annotations

import os

import pytest

from fxtap._io import write_atomic
from fxtap.errors import OutputPathError, UnsafeOutputError


def test_writes_text_bytes_and_callables(tmp_path):
    assert write_atomic(tmp_path / "a.txt", "héllo").read_text(encoding="utf-8") == "héllo"
    assert write_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert write_atomic(tmp_path / "c.bin", lambda f: f.write(b"xyz")).read_bytes() == b"xyz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.bin"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old", encoding="utf-8")

    def broken(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputPathError, match="No space left"):
        write_atomic(target, broken)
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_refuses_a_fifo_and_leaves_it_in_place(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OutputPathError, match="not a regular file"):
        write_atomic(fifo, "x", hint="Pass -o FILE.")
    assert fifo.is_fifo()


def test_refuses_a_device_node():
    with pytest.raises(OutputPathError, match="not a regular file"):
        write_atomic("/dev/null", "x")
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_refuses_a_folder_and_a_missing_folder(tmp_path):
    with pytest.raises(OutputPathError, match="it is a directory"):
        write_atomic(tmp_path, "x")
    with pytest.raises(OutputPathError, match=r"does not exist\. Pass -o FILE\."):
        write_atomic(tmp_path / "nope" / "f.txt", "x", hint="Pass -o FILE.")


def test_result_has_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "p.txt", "x")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_refuses_a_symlink_and_leaves_it_and_its_target_untouched(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("not fxtap's", encoding="utf-8")
    link, dangling = tmp_path / "link", tmp_path / "dangling"
    link.symlink_to(target)
    dangling.symlink_to(tmp_path / "nowhere")
    for path in (link, dangling):
        with pytest.raises(UnsafeOutputError, match=r"symbolic link .* never replaces a link"):
            write_atomic(path, "x")
        assert path.is_symlink()
    assert target.read_text(encoding="utf-8") == "not fxtap's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "link", "precious.txt"]


def test_save_and_render_refuse_a_symlink(tmp_path):
    import torch

    import fxtap
    from support.models import Nested

    target = tmp_path / "precious.txt"
    target.write_text("not fxtap's", encoding="utf-8")
    (tmp_path / "ex.fxtap").symlink_to(target)
    (tmp_path / "Nested.eval.dot").symlink_to(target)
    ex = fxtap.create_feature_extractor(Nested(), ["stage"])
    for fmt in ("fxtap", "pickle"):
        with pytest.raises(UnsafeOutputError, match="symbolic link"):
            fxtap.save(ex, tmp_path / "ex.fxtap", fmt=fmt)
    with pytest.raises(UnsafeOutputError, match="symbolic link"):
        fxtap.render(Nested(), mode="eval", fmt="dot", out_dir=tmp_path)
    (tmp_path / "Nested.eval.dot").unlink()
    (tmp_path / "Nested.eval.svg").symlink_to(target)  # Graphviz's own -o writes through links
    with pytest.raises(UnsafeOutputError, match="symbolic link"):
        fxtap.render(Nested(), mode="eval", fmt="svg", out_dir=tmp_path)
    assert target.read_text(encoding="utf-8") == "not fxtap's"
    assert (tmp_path / "ex.fxtap").is_symlink() and (tmp_path / "Nested.eval.svg").is_symlink()
    assert torch.is_tensor(ex(torch.randn(1, 3, 8, 8))["stage"])
