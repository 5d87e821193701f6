"""Where a training run stands (``RunState``: what checkpoints save and resume restores), its timers and its log."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class StopRun(Exception):
    """Ends a run early on purpose, from inside the loop (a collapsed seed to restart, a sweep trial to prune): the
    run closes its progress bar and trackers and the exception goes on to whoever asked for it."""


@dataclass
class RunState:
    """Where the loop stands and what it has seen so far: a checkpoint's state.json is ``state_dict()``."""

    step: int = 0  # optimizer steps taken (skipped non-finite steps included)
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` done: a resumed run skips them
    examples: int = 0  # training examples seen by this process
    nan_skipped_steps: int = 0
    running_loss: float = 0.0  # the mean loss since the last point of the curve (filled in when saved)
    running_n: int = 0  # micro-batch losses summed since then
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per evaluation
    train_loss_curve: list[list[float]] = field(default_factory=list)  # [step, mean loss] every 10 steps
    best: dict[str, Any] = field(default_factory=dict)  # metric, value, step (and the decision state)
    early_stopping: dict[str, Any] = field(default_factory=dict)
    collapse: dict[str, Any] = field(default_factory=dict)  # seeds that collapsed before this one, or a warning

    @classmethod
    def start(cls, metric: str, patience: int, min_delta: float) -> RunState:
        # Early stopping counts evaluations since the last improvement of more than min_delta (best/ still follows
        # every improvement, however small).
        stopping = {"patience": patience, "min_delta": min_delta, "stopped": False, "step": None, "reference": None}
        stopping["evals_without_improvement"] = 0
        return cls(best={"metric": metric, "value": None, "step": None}, early_stopping=stopping)

    @property
    def stopped(self) -> bool:
        return self.early_stopping["stopped"]

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        for f in fields(self):
            if f.name in saved or f.name != "collapse":  # (checkpoints from before collapse checks lack it)
                setattr(self, f.name, saved[f.name])


@dataclass
class Timer:
    """Seconds spent in the loop: evaluation inside it is kept apart from training speed."""

    tick: float = 0.0  # when the loop started
    fitted: float = 0.0  # when the model was trained (before best/, calibration and the test split)
    eval_time: float = 0.0  # validation with metrics and best/ writing
    predict_time: float = 0.0  # prediction alone: the evaluation speed reported in metrics.json
    predicted: int = 0

    def train_time(self) -> float:
        return time.perf_counter() - self.tick - self.eval_time


class RunLog:
    """Prints (above the progress bar) and appends to train.log, on the main process only.

    Made without a path, it holds its lines until ``open`` names train.log: a run checks its data and options
    (and says what it found) before anything is written, and train.log still gets every line the console showed.
    """

    def __init__(self, path: Path | None, enabled: bool):
        self.path, self.enabled = path, enabled
        self.held: list[str] = []

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        tqdm.write(msg)
        if self.path is None:
            self.held.append(msg)
            return
        with self.path.open("a") as f:
            f.write(msg + "\n")

    def open(self, path: Path) -> None:
        """From now on append to ``path``, starting with the lines held so far."""
        self.path = path
        if self.enabled and self.held:
            with path.open("a") as f:
                f.write("".join(m + "\n" for m in self.held))
        self.held = []
