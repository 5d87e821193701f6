"""Experiment tracking through accelerate: output.tracking=[tensorboard] writes the logged scalars."""

from __future__ import annotations

import pytest

from bertcls import BertclsError
from bertcls.tracking import check_trackers
from bertcls.train import train

from .test_train import tiny_cfg


def test_unknown_or_missing_tracker_is_a_clear_error(monkeypatch):
    with pytest.raises(BertclsError, match="unknown tracker 'tensorbored'.*tensorboard"):
        check_trackers(["tensorbored"])
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    with pytest.raises(BertclsError, match="pip install comet-ml"):
        check_trackers(["comet_ml"])


def test_tensorboard_event_file_holds_the_scalars(tiny_bert, tiny_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    extra = ("output.tracking=[tensorboard]", "train.max_steps=10", "eval.every_steps=5")
    result = train(tiny_cfg(tiny_bert, tiny_data, out, *extra))
    events = list((out / "tracking").rglob("events.out.tfevents.*"))
    assert events
    scalars: dict[str, list[tuple[int, float]]] = {}
    for e in events:
        acc = EventAccumulator(str(e.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(s.step, s.value) for s in acc.Scalars(tag)]
    assert [s for s, _ in scalars["validation/accuracy"]] == [5, 10]
    assert scalars["validation/accuracy"][-1][1] == pytest.approx(result["history"][-1]["validation"]["accuracy"])
    assert scalars["train/loss"][-1] == (10, pytest.approx(result["train_loss_curve"][-1][1]))
    assert scalars["test/accuracy"][-1][1] == pytest.approx(result["test"]["accuracy"])
