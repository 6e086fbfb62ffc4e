"""Atomic writes: the final name holds the old file or the complete new one, never a part."""

from __future__ import annotations

import os

import pytest

from cvdm_cli.io.atomic import atomic_path, partial_path, write_bytes_atomic, write_text_atomic


def test_partial_name_is_a_hidden_sibling_with_the_pid(tmp_path):
    tmp = partial_path(tmp_path / "model.safetensors")
    assert tmp.parent == tmp_path
    assert tmp.name == f".model.safetensors.partial-{os.getpid()}"


@pytest.mark.parametrize("fsync", [True, False])
def test_success_renames_onto_the_final_name(tmp_path, fsync):
    final = tmp_path / "a.txt"
    final.write_text("old")
    with atomic_path(final, fsync=fsync) as tmp:
        assert tmp == partial_path(final)
        tmp.write_text("new")
        assert final.read_text() == "old"  # nothing visible before the rename
    assert final.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_or_interrupt_removes_the_partial_file_and_keeps_the_old(tmp_path, error):
    final = tmp_path / "a.txt"
    final.write_text("old")
    with pytest.raises(type(error)), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise error
    assert final.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_body_that_writes_nothing_fails_and_leaves_nothing(tmp_path):
    final = tmp_path / "a.txt"
    with pytest.raises(FileNotFoundError), atomic_path(final):
        pass
    assert list(tmp_path.iterdir()) == []


def test_text_and_bytes_helpers(tmp_path):
    assert write_text_atomic(tmp_path / "t.json", "µm\n").read_bytes() == "µm\n".encode()
    assert write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "t.json"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_raises_the_os_error_unchanged(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError):
            write_text_atomic(folder / "a.txt", "x")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_missing_folder_raises_the_os_error_unchanged(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_bytes_atomic(tmp_path / "nope" / "a.bin", b"x")
