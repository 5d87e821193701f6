"""The training command's allocator choice: jemalloc when the machine has it, with an off switch."""

from __future__ import annotations

import os

import pytest

from bertcls.speed import allocator

from .conftest import assert_one_line_error, run_cli
from .test_train import tiny_overrides


def test_preload_env_adds_the_library_once(tmp_path, monkeypatch):
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"\x00JEMALLOC 5.3.0-0-g54eaed1d8b56b1aa528be3bdd1877e59c56fa90c\x00")  # as Debian's carries it
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv(allocator.ENV, str(lib))
    env = allocator.preload_env({"LD_PRELOAD": "libother.so", "PATH": "/bin"})
    assert env["LD_PRELOAD"] == f"{lib} libother.so" and env["PATH"] == "/bin"
    assert env["MALLOC_CONF"] == allocator.MALLOC_CONF  # freed pages kept for reuse: no page faults every batch
    assert allocator.preload_env({"MALLOC_CONF": "narenas:1"})["MALLOC_CONF"] == "narenas:1"  # the user's wins
    lib.write_bytes(b"\x004.5.0-0-g04380e79f1e2428bd0ad000bbc6e3d2dfc6b66a5\x00")  # too old for those options
    assert "MALLOC_CONF" not in allocator.preload_env({})
    lib.write_bytes(b"")  # no version to read: nothing it might not understand
    assert "MALLOC_CONF" not in allocator.preload_env({})
    lib.write_bytes(b"\x005.3.0-0-g54eaed1d8b56b1aa528be3bdd1877e59c56fa90c\x00")
    assert allocator.preload_env(env) is None  # marked: a library that fails to load cannot make a re-run loop
    assert allocator.preload_env({"LD_PRELOAD": "/opt/libjemalloc.so"}) is None  # the user preloaded it already
    monkeypatch.setenv(allocator.ENV, "system")
    assert allocator.find_jemalloc() is None and allocator.preload_env({}) is None
    monkeypatch.setattr("sys.platform", "darwin")
    monkeypatch.setenv(allocator.ENV, str(lib))
    assert allocator.preload_env({}) is None


@pytest.mark.integration
def test_training_command_runs_under_jemalloc_when_found(tiny_bert, tiny_data, tmp_path, monkeypatch):
    found = allocator.find_jemalloc()
    if found is None:
        pytest.skip("no jemalloc on this machine (apt install libjemalloc2)")
    args = tiny_overrides(tiny_bert, tiny_data, tmp_path / "a", "train.max_steps=1")
    proc = run_cli("bertcls.train", *args)
    assert proc.returncode == 0, proc.stderr
    assert "allocator jemalloc" in proc.stdout
    assert "<jemalloc>" not in proc.stderr  # it understood every option bertcls gave it
    monkeypatch.setenv(allocator.ENV, "system")
    proc = run_cli("bertcls.train", *tiny_overrides(tiny_bert, tiny_data, tmp_path / "b", "train.max_steps=1"))
    assert proc.returncode == 0 and "allocator system malloc" in proc.stdout, proc.stderr


@pytest.mark.integration
def test_a_missing_allocator_library_is_a_one_line_error(tiny_bert, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv(allocator.ENV, str(tmp_path / "nope.so"))
    proc = run_cli("bertcls.train", *tiny_overrides(tiny_bert, tiny_data, tmp_path / "a", "train.max_steps=1"))
    assert_one_line_error(proc, "no such file")
    assert not (tmp_path / "a").exists()


def test_training_caps_the_onednn_primitive_caches_unless_set(tiny_bert, tiny_data, tmp_path, monkeypatch):
    from bertcls.config import load_config
    from bertcls.train import train

    # Set before the process's first bf16 matmul, these keep memory from growing with every new batch length.
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "512")  # the user's own choice wins
    train(load_config(None, tiny_overrides(tiny_bert, tiny_data, tmp_path / "a", "train.max_steps=1")))
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(allocator.PRIMITIVE_CACHE_CAPACITY)
    assert os.environ["LRU_CACHE_CAPACITY"] == "512"
