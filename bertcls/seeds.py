"""``train.seeds=[1,2,3]``: the same config trained once per seed, and how much the seed alone moves the result.

Each seed's run goes to ``output.dir/seed-N/`` as a plain run would. With a test split the seeds' best checkpoints
are then evaluated side by side (``bertcls.evaluate``, ``output.dir/seed_comparison/``): the paired bootstrap of
each seed's test accuracy against the first's says whether two seeds differ beyond the test set's noise.
``output.dir/seeds.json`` holds every seed's test metrics, their mean ± std and those comparisons.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bertcls import jsonio
from bertcls.config import Config, resolve_split
from bertcls.drivers import train_one
from bertcls.errors import BertclsError

SUMMARY = "seeds.json"


def check_seeds_dir(cfg: Config) -> Path:
    """``output.dir`` if it can take a seed comparison: an error where it holds one and ``output.overwrite`` is off."""
    out = Path(cfg.output.dir)
    if (out / SUMMARY).exists() and not cfg.output.overwrite:
        raise BertclsError(
            f"output.dir {out} already holds a seed summary ({SUMMARY}); choose another output.dir or set "
            "output.overwrite=true"
        )
    if cfg.train.resume_from:
        raise BertclsError("train.seeds runs every seed afresh; resume one seed's run in its own seed-N folder")
    return out


def train_seeds(cfg: Config, data=None) -> dict[str, Any]:
    """Train ``cfg`` once per ``train.seeds`` entry and compare the seeds; returns what ``seeds.json`` holds.

    Raises:
        BertclsError: an ``output.dir`` that holds a seed summary and no ``output.overwrite``, bad data or options.
    """
    out = check_seeds_dir(cfg)
    runs = []
    for seed in cfg.train.seeds:
        print(f"seed {seed} ({len(runs) + 1} of {len(cfg.train.seeds)}): output.dir {out / f'seed-{seed}'}")
        one = replace(
            cfg,
            train=replace(cfg.train, seed=seed, seeds=[]),
            output=replace(cfg.output, dir=str(out / f"seed-{seed}")),
        )
        result = train_one(one, data)
        runs.append(
            {"seed": seed, "test": result.get("test"), "best": result["best"], "collapse": result.get("collapse")}
        )
    summary: dict[str, Any] = {"seeds": runs}
    tests = [r["test"] for r in runs if r["test"]]
    if tests:
        keys = [k for k in tests[0] if k != "num_examples"]
        summary["test_mean"] = {k: float(np.mean([t[k] for t in tests])) for k in keys}
        summary["test_std"] = {k: float(np.std([t[k] for t in tests], ddof=1)) if len(tests) > 1 else 0.0 for k in keys}
    if tests and len(runs) > 1:
        summary["comparison"] = compare_seeds(cfg, out, [r["seed"] for r in runs])
    (out / SUMMARY).write_text(jsonio.dumps(summary, indent=2))
    print(format_seeds(summary))
    return summary


def compare_seeds(cfg: Config, out: Path, seeds: list[int]) -> list[dict[str, Any]]:
    """Each seed's best checkpoint against the first seed's on the test split (paired bootstrap)."""
    from bertcls.evaluate import evaluate

    d = cfg.data
    report = evaluate(
        [out / f"seed-{s}" / "best" for s in seeds],
        resolve_split(d, "test"),
        text_column=d.text_column,
        text_pair_column=d.text_pair_column,
        label_column=d.label_column,
        label_delimiter=d.label_delimiter,
        output=out / "seed_comparison",
        overwrite=True,
        batch_size=cfg.eval.batch_size,
        precision=cfg.train.mixed_precision,  # as each run scored its test split
        seed=cfg.train.seeds[0],
        verbose=False,
    )
    return report["comparisons"]


def format_seeds(summary: dict[str, Any]) -> str:
    lines = [f"{len(summary['seeds'])} seeds:"]
    for r in summary["seeds"]:
        test = r["test"] or {}
        scores = "   ".join(f"{k} {v:.4f}" for k, v in test.items() if k != "num_examples")
        collapsed = [c["seed"] for c in (r.get("collapse") or {}).get("collapsed", [])]
        retried = f"   (seed(s) {collapsed} collapsed first)" if collapsed else ""
        lines.append(f"  seed {r['seed']}: test {scores or '(no test split)'}{retried}")
    if "test_mean" in summary:
        spread = "   ".join(
            f"{k} {summary['test_mean'][k]:.4f} ± {summary['test_std'][k]:.4f}" for k in summary["test_mean"]
        )
        lines.append(f"  mean ± std: {spread}")
    for c in summary.get("comparison", []):
        verdict = "likely real" if c["ci_low"] > 0 or c["ci_high"] < 0 else "within noise"
        lines.append(
            f"  {Path(c['checkpoint']).parent.name} vs {Path(c['baseline']).parent.name}: {c['metric']} "
            f"{c['accuracy_difference']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] {verdict}"
        )
    return "\n".join(lines)
