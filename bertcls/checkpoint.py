"""Resumable checkpoints: ``output.dir/checkpoints/step-N``, written atomically, found again, pruned.

A checkpoint is accelerate's ``save_state`` folder (model weights as safetensors; optimizer, scheduler and RNG
states as torch files) plus ``state.json``: where the loop stood (step, epoch, batch within the epoch) and what it
had recorded (history, loss curve, best so far). It is written into a hidden temporary folder and renamed into
place only when complete, so a crash mid-write never leaves a folder that looks like a checkpoint.

Loading never unpickles arbitrary objects: accelerate 1.15's ``load_state`` reads every torch file through
``accelerate.utils.load``, which defaults to ``torch.load(weights_only=True)`` (plus numpy arrays for the RNG
states); we also pass ``weights_only=True`` explicitly so a future default cannot silently change that. No custom
objects are registered with ``register_for_checkpointing`` (those accelerate loads with ``weights_only=False``).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from bertcls.errors import BertclsError

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
        (tmp / STATE_FILE).write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
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
        BertclsError: the folder is damaged or holds something that is not plain tensors.
    """
    from safetensors.torch import load_file

    try:
        state = json.loads((path / STATE_FILE).read_text())
        accelerator.load_state(str(path), load_kwargs={"weights_only": True})
        head = load_file(str(path / BEST_HEAD_FILE)) if (path / BEST_HEAD_FILE).is_file() else None
    except Exception as e:  # unpickling refusals, corrupt safetensors, shape mismatches: all mean a bad checkpoint
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BertclsError(f"cannot resume from {path}: {type(e).__name__}: {first[:300]}") from e
    return state, head


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
