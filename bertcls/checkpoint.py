"""Resumable checkpoints: ``output.dir/checkpoints/step-N``, written atomically, found again, pruned.

A checkpoint is accelerate's ``save_state`` folder (model weights as safetensors; optimizer, scheduler and RNG
states as torch files) plus ``state.json``: where the loop stood (step, epoch, batch within the epoch) and what it
had recorded (history, loss curve, best so far). It is written into a hidden temporary folder and renamed into
place only when complete, so a crash mid-write never leaves a folder that looks like a checkpoint.

Loading never unpickles arbitrary objects: accelerate 1.15's ``load_state`` reads every torch file through
``accelerate.utils.load``, which defaults to ``torch.load(weights_only=True)`` (plus numpy arrays for the RNG
states); we also pass ``weights_only=True`` explicitly so a future default cannot silently change that. No custom
objects are registered with ``register_for_checkpointing`` (those accelerate loads with ``weights_only=False``).
Each process's RNG states (``random_states_<i>.pkl``) are read and checked here before ``load_state``, which
would only log a missing or unreadable one and carry on with other random numbers than the interrupted run.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from bertcls import jsonio
from bertcls.atomic import replace_dir
from bertcls.errors import BertclsError, first_line, label_set

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"  # written last: a folder without it is not a complete checkpoint
BEST_HEAD_FILE = "best_head.safetensors"  # cached runs keep their best head in memory; it travels here
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_step(path: Path) -> int | None:
    """The step of a complete checkpoint folder ``step-N``, else None."""
    m = _NAME.match(path.name)
    return int(m.group(1)) if m and (path / STATE_FILE).is_file() else None


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints under ``out/checkpoints``, oldest first."""
    root = Path(out) / CHECKPOINTS
    found = [(checkpoint_step(p), p) for p in root.iterdir()] if root.is_dir() else []
    return [p for step, p in sorted((s, p) for s, p in found if s is not None)]


def resolve_resume(resume_from: str | None, out: Path) -> Path | None:
    """The checkpoint folder ``train.resume_from`` points at (``latest``: the newest complete one in ``out``).

    Raises:
        BertclsError: nothing to resume from there.
    """
    if not resume_from:
        return None
    if resume_from == "latest":
        found = list_checkpoints(out)
        if not found:
            raise BertclsError(
                f"train.resume_from=latest: no complete checkpoint in {Path(out) / CHECKPOINTS} "
                "(set checkpoint.every_steps to write them, or drop train.resume_from)"
            )
        return found[-1]
    path = Path(resume_from)
    if checkpoint_step(path) is None:
        raise BertclsError(f"train.resume_from: {path} is not a complete checkpoint folder (step-N with {STATE_FILE})")
    return path


def check_resume_labels(path: Path, labels: list[str]) -> None:
    """A checkpoint is resumed only with the labels it was trained on (its ``state.json`` records them; older
    checkpoints, without the record, fail at loading with the weights' shapes named).

    Raises:
        BertclsError: the run's labels are not the checkpoint's.
    """
    saved = json.loads((Path(path) / STATE_FILE).read_text()).get("labels")
    if saved is not None and list(saved) != list(labels):
        raise BertclsError(
            f"cannot resume from {path}: it was trained on labels {label_set(saved)}, this run's data has "
            f"{label_set(labels)}; resume with the data it was trained on, or drop train.resume_from to start afresh"
        )


def save_checkpoint(
    accelerator: Accelerator,
    out: Path,
    state: dict[str, Any],
    keep_last: int,
    extra_tensors: dict[str, Any] | None = None,
) -> Path:
    """Write ``out/checkpoints/step-<state['step']>`` atomically and prune to ``keep_last`` (all processes call this).

    Every process writes its own RNG state into the temporary folder; the main process writes the rest and renames.
    """
    from safetensors.torch import save_file

    root = Path(out) / CHECKPOINTS
    final = root / f"step-{state['step']}"
    tmp = root / f".tmp-step-{state['step']}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover from a crash mid-write
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    # save_state does not wait: every process must have written its RNG state before the folder is renamed.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if extra_tensors:
            save_file({k: v.contiguous() for k, v in extra_tensors.items()}, str(tmp / BEST_HEAD_FILE))
        (tmp / STATE_FILE).write_text(jsonio.dumps(state))
        # Not atomic_dir: every process writes into this folder, so its name is one they all know.
        replace_dir(tmp, final)
        prune(root.parent, keep_last, protect_step=(state.get("best") or {}).get("step"))
    accelerator.wait_for_everyone()
    return final


def prune(out: Path, keep_last: int, protect_step: int | None = None) -> list[Path]:
    """Remove all but the newest ``keep_last`` complete checkpoints, never the one at ``protect_step`` (the best)."""
    found = list_checkpoints(out)
    removed = [p for p in found[: max(len(found) - keep_last, 0)] if checkpoint_step(p) != protect_step]
    for p in removed:
        shutil.rmtree(p)
    return removed


def load_checkpoint(accelerator: Accelerator, path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Restore model, optimizer, scheduler and RNG states from ``path``; returns (state.json, best head or None).

    Raises:
        BertclsError: the folder is damaged, lacks this process's RNG state or holds something that is not plain
            tensors.
    """
    from safetensors.torch import load_file

    rng = read_rng_state(path, accelerator.process_index)
    try:
        state = json.loads((path / STATE_FILE).read_text())
        accelerator.load_state(str(path), load_kwargs={"weights_only": True})
        head = load_file(str(path / BEST_HEAD_FILE)) if (path / BEST_HEAD_FILE).is_file() else None
    except Exception as e:  # unpickling refusals, corrupt safetensors, shape mismatches: all mean a bad checkpoint
        raise BertclsError(f"cannot resume from {path}: {type(e).__name__}: {load_error(e)[:300]}") from e
    check_rng_restored(path, accelerator.process_index, rng)
    return state, head


def load_error(e: BaseException) -> str:
    """An exception's first line, and for torch's "Error(s) in loading state_dict for X:" (whose first line says
    nothing) its first detail too, e.g. "size mismatch for out.weight ... [3, 32] ... [2, 32]"."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[1]}"
    return first_line(e)


RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")  # what every process saves, on any device


def rng_file(path: Path, process_index: int) -> Path:
    """The file accelerate's ``save_state`` writes each process's RNG states into."""
    from accelerate.utils.constants import RNG_STATE_NAME

    return Path(path) / f"{RNG_STATE_NAME}_{process_index}.pkl"


def read_rng_state(path: Path, process_index: int) -> dict[str, Any]:
    """This process's RNG states from checkpoint ``path``, read as ``load_state`` reads them (weights only).

    accelerate's ``load_state`` logs "Could not load random states" at info level and carries on when that file is
    missing or unreadable, so a resumed run would silently draw other dropout masks and shuffles than the run it
    continues; here that is an error.

    Raises:
        BertclsError: the file is missing, unreadable, or lacks the Python, numpy or torch state.
    """
    from accelerate.utils import load

    file = rng_file(path, process_index)
    if not file.is_file():
        raise BertclsError(
            f"cannot resume from {path}: {file.name} (the random state of process {process_index}) is missing; "
            "resume with as many processes as wrote the checkpoint, or from another one (train.resume_from=<folder>)"
        )
    try:
        states = load(file, map_location="cpu", weights_only=True)
        missing = [k for k in RNG_KEYS if k not in states] if isinstance(states, dict) else list(RNG_KEYS)
        if missing:
            raise ValueError(f"no {', '.join(missing)} in it")
    except Exception as e:  # truncated, overwritten, a pickle of other objects: weights_only refuses it unrun
        first = first_line(e)
        raise BertclsError(
            f"cannot resume from {path}: {file.name} (the random state of process {process_index}) is damaged "
            f"({type(e).__name__}: {first[:200]}); resume from another checkpoint (train.resume_from=<folder>) "
            "or start again without train.resume_from"
        ) from e
    return states


def check_rng_restored(path: Path, process_index: int, states: dict[str, Any]) -> None:
    """Raise BertclsError unless Python's, numpy's and torch's RNGs (CPU, and CUDA where saved and present) are now
    as ``states`` holds them: ``load_state`` swallows a failure to set one (a state of the wrong size or type, a GPU
    count that differs)."""
    import random

    import numpy as np
    import torch

    ours, theirs = np.random.get_state(), states["numpy_random_seed"]
    restored = (
        random.getstate() == states["random_state"]
        and len(ours) == len(theirs)
        and all(np.array_equal(a, b) for a, b in zip(ours, theirs))
        and torch.equal(torch.get_rng_state(), torch.as_tensor(states["torch_manual_seed"]))
    )
    if restored and torch.cuda.is_available() and "torch_cuda_manual_seed" in states:
        saved = states["torch_cuda_manual_seed"]
        now = torch.cuda.get_rng_state_all()
        restored = len(saved) <= len(now) and all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(saved, now))
    if not restored:
        raise BertclsError(
            f"cannot resume from {path}: the random state in {rng_file(path, process_index).name} could not be "
            "restored (damaged, or saved on a machine with other devices); resume from another checkpoint "
            "(train.resume_from=<folder>) or start again without train.resume_from"
        )


class StopSignals:
    """Turns SIGTERM and Ctrl-C (SIGINT) into a flag the loop checks after each optimizer step, so the run can save
    a checkpoint and exit cleanly; a second signal gets the default behaviour (stop at once). Use as a context
    manager; outside the main thread (where Python cannot install handlers) it does nothing."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        import signal

        self.received = signum
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

    def __enter__(self) -> StopSignals:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for s, old in self._old.items():
            signal.signal(s, old)


class TrainingStopped(BertclsError):
    """The run stopped early on request (a signal) or on a non-finite loss; ``exit_code`` is what the CLI returns."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def resume_command(argv: list[str]) -> str:
    """The command line that continues this run: the same arguments plus ``train.resume_from=latest``."""
    import shlex

    args = [a for a in argv if not a.startswith("train.resume_from=")]
    return shlex.join(["python", "-m", "bertcls.train", *args, "train.resume_from=latest"])
