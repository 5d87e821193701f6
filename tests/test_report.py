"""Presentation lives beside the tasks, one view per task: none may be missing or name other columns."""

from __future__ import annotations

from bertcls.plots import CURVES
from bertcls.report import VIEWS, view
from bertcls.tasks import TASKS


def test_every_task_has_a_view_and_learning_curves():
    assert VIEWS.keys() == TASKS.keys() == CURVES.keys()
    for task in TASKS.values():
        assert len(view(task).summary_names) == len(task.summary)  # a title per comparison column
        _, scores = CURVES[task.name]
        assert {key for key, *_ in scores} <= set(task.metrics)  # the curves draw what validation records


def test_output_fields_and_csv_cells_per_task():
    single, multi = view(TASKS["single_label"]), view(TASKS["multi_label"])
    assert single.output_fields({"label": "pos", "score": 0.9}) == {"predicted": "pos", "score": 0.9}
    assert single.csv_cells("pos", 0, ["neg", "pos"], "|") == ("pos", "neg")
    prediction = {"labels": ["a", "b"], "scores": [0.9, 0.6]}
    assert multi.output_fields(prediction, "|") == {"predicted": "a|b"}
    assert multi.output_fields(prediction) == {"predicted": ["a", "b"], "scores": [0.9, 0.6]}
    assert multi.csv_cells(["b", "a"], [1, 0, 1], ["a", "b", "c"], "|") == ("b|a", "a|c")
