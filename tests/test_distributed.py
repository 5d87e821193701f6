"""Two processes under torchrun: a process that dies or hangs makes the run fail in bounded time, with a message."""

from __future__ import annotations

import time

import pytest

from .conftest import run_torchrun

pytestmark = pytest.mark.integration


def fault_args(tiny_bert, tiny_data, tmp_path) -> list[str]:
    return [
        f"model.name_or_path={tiny_bert}",
        "train.collapse_retries=0",
        "train.recipe=finetune",  # a subprocess: auto would pick a few-label recipe for the tiny file (conftest)
        f"data.train={tiny_data['train']}",
        f"data.validation={tiny_data['validation']}",
        "data.test=null",
        f"output.dir={tmp_path / 'run'}",
        "train.max_steps=4",
        "train.batch_size=8",
        "train.dist_timeout=10",
    ]


def test_a_hung_process_makes_the_other_fail_with_a_clear_error(tiny_bert, tiny_data, tmp_path):
    start = time.perf_counter()
    proc = run_torchrun(fault_args(tiny_bert, tiny_data, tmp_path), timeout=150, module=["tests.ddp_fault", "hang"])
    assert proc.returncode != 0
    # rank 0 waited train.dist_timeout (10 s) at its next collective, then said why in one line
    assert "error: process 0 of 2: another process stopped answering" in proc.stderr, proc.stderr[-3000:]
    assert "train.dist_timeout=10s" in proc.stderr
    assert time.perf_counter() - start < 150


def test_a_dead_process_ends_the_run(tiny_bert, tiny_data, tmp_path):
    proc = run_torchrun(fault_args(tiny_bert, tiny_data, tmp_path), timeout=150, module=["tests.ddp_fault", "die"])
    assert proc.returncode != 0
    # torchrun names the process that failed first and stops the other
    assert "exitcode  : 7" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "run" / "metrics.json").exists()
