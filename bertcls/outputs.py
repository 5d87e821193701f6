"""A run's output folder: what a run writes there, and the checks that keep an earlier run's results safe."""

from __future__ import annotations

from pathlib import Path

from bertcls.atomic import remove
from bertcls.checkpoint import CHECKPOINTS
from bertcls.config import Config
from bertcls.errors import BertclsError

# What a run writes into output.dir; only these are removed by output.overwrite=true.
RUN_FILES = ("best", "last", "metrics.json", "config.yaml", "train.log", "curves.png", "tracking", CHECKPOINTS)
RUN_RESULTS = ("best", "last", "metrics.json", CHECKPOINTS)  # a folder with any of these holds a run worth keeping


def check_output_dir(cfg: Config) -> list[Path]:
    """bertcls's files already in ``output.dir``; an error if they hold a run and ``output.overwrite`` is off."""
    out = Path(cfg.output.dir)
    if out.exists() and not out.is_dir():
        raise BertclsError(f"output.dir {out} is a file, not a folder")
    existing = [p for p in (out.iterdir() if out.exists() else []) if p.name in RUN_FILES]
    if cfg.train.resume_from:
        # Resuming continues the interrupted run in place: nothing is removed, but a finished run stays finished.
        if (out / "metrics.json").exists() and not cfg.output.overwrite:
            raise BertclsError(f"output.dir {out} holds a finished run (metrics.json); there is nothing to resume")
        return []
    if any(p.name in RUN_RESULTS for p in existing) and not cfg.output.overwrite:
        # A finished run (metrics.json) has nothing left to resume; an interrupted one can be continued.
        finished = (out / "metrics.json").exists()
        raise BertclsError(
            f"output.dir {out} already holds a {'finished ' if finished else ''}run "
            f"({', '.join(sorted(p.name for p in existing))}); choose another output.dir"
            + (
                " or set output.overwrite=true"
                if finished
                else ", set output.overwrite=true, or continue it with train.resume_from=latest"
            )
        )
    return existing


def prepare_output_dir(cfg: Config) -> Path:
    """Remove only bertcls's own files from an earlier run (when allowed) and check the folder is writable."""
    out = Path(cfg.output.dir)
    remove(check_output_dir(cfg))
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write_test").touch()
        (out / ".write_test").unlink()
    except OSError as e:
        raise BertclsError(f"cannot write to output.dir {out}: {e.strerror}") from e
    return out
