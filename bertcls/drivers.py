"""The drivers that run the one-run recipe (``bertcls.run.run_once``) several times as one training: a run restarted
with the next seed while it collapses (``retrying_collapse``), and LP-FT's two phases (``train_lp_ft``).
``train_one`` picks between them; ``bertcls.train.train`` (and ``bertcls.seeds`` for each seed) calls it. The recipe
never calls back into a driver.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from accelerate.state import PartialState

from bertcls import jsonio
from bertcls.collapse import Collapsed
from bertcls.config import Config
from bertcls.outputs import check_output_dir

# What scripts and tests import from here, wherever it lives.
from bertcls.run import run_once
from bertcls.run_data import RunData


def train_one(cfg: Config, data: RunData | None = None, on_validation=None) -> dict[str, Any]:
    """One training as ``cfg.train.schedule`` says: LP-FT's two phases, or one run retried on collapse."""
    if cfg.train.schedule == "lp_ft":
        return train_lp_ft(cfg, data, on_validation)
    return retrying_collapse(cfg, data, on_validation)


def retrying_collapse(cfg: Config, data: RunData | None, on_validation=None) -> dict[str, Any]:
    """``run_once``, restarted with the next seed (into the same output.dir) while its first validation shows collapse
    and ``train.collapse_retries`` allows (``bertcls.collapse``)."""
    collapsed: list[dict[str, Any]] = []
    while True:
        try:
            return run_once(cfg, data, collapsed, on_validation)
        except Collapsed as c:
            t = cfg.train
            collapsed.append({"seed": t.seed, "step": c.step, "reason": c.reason})
            retry = replace(t, seed=t.seed + 1, collapse_retries=t.collapse_retries - 1, resume_from=None)
            # The collapsed attempt's files are this run's own: the retry replaces them.
            cfg = replace(cfg, train=retry, output=replace(cfg.output, overwrite=True))


def train_lp_ft(cfg: Config, data: RunData | None = None, on_validation=None) -> dict[str, Any]:
    """Linear probing, then fine-tuning (Kumar et al. 2022, arXiv 2202.10054), as one run.

    Phase 1 trains the head alone on the frozen backbone (on cached features) into ``output.dir/linear_probe``;
    phase 2 fine-tunes everything starting from that head, into ``output.dir``. A fine-tuned head that starts out
    good distorts the pretrained features less than a random one.
    """
    check_output_dir(cfg)
    probe_dir = Path(cfg.output.dir) / "linear_probe"
    t = cfg.train
    head_lr = t.head_lr if t.head_lr is not None else t.lr
    probe = replace(
        cfg,
        model=replace(cfg.model, freeze_backbone=True, unfreeze_top_k=0),
        # Calibrated once, at the end: phase 2 starts from the probe's head as fitted, not divided by its T.
        eval=replace(cfg.eval, calibration="none"),
        train=replace(
            t,
            schedule="standard",
            recipe="finetune",  # each phase runs as this function configures it
            epochs=t.lp_epochs,
            max_steps=-1,
            lr=head_lr,
            warmup_ratio=0.0,
            gradual_unfreeze=False,
            unpadded=False,  # the probe trains on cached features (train.unpadded is for phase 2's token batches)
            # Resuming an lp_ft run reruns the probe (seconds on the cache); only phase 2 resumes.
            resume_from=None,
        ),
        output=replace(cfg.output, dir=str(probe_dir), overwrite=True),
    )
    probe_result = retrying_collapse(probe, data)
    full = replace(
        cfg,
        # reinit_top_k already happened in the probe phase, whose features the head was fitted on.
        model=replace(
            cfg.model,
            name_or_path=str(probe_dir / "best"),
            new_head=False,  # phase 2 continues the probe's head (which new_head, if set, made new)
            freeze_backbone=False,
            unfreeze_top_k=0,
            reinit_top_k=0,
        ),
        train=replace(t, schedule="standard", recipe="finetune"),
    )
    result = retrying_collapse(full, data, on_validation)
    result["schedule"] = "lp_ft"
    result["linear_probe"] = {k: probe_result.get(k) for k in ("best", "history", "test", "train_time_s")}
    if PartialState().is_main_process:
        (Path(cfg.output.dir) / "metrics.json").write_text(jsonio.dumps(result, indent=2))
    return result
