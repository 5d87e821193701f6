"""``python -m bertcls.sweep``: hyperparameter search with Optuna over any config keys.

Each trial is a ``bertcls.train`` run of the config with the trial's values, in ``output.dir/trials/trial-N``; its
objective is the validation metric the config selects checkpoints by (``eval.metric``, maximised, or minimised for
losses). Frozen-backbone trials share the feature cache, so the backbone runs once for the whole sweep. The median
pruner stops a trial whose validation metric trails the earlier trials' median at the same step. A trial that fails
(a bad value, a non-finite loss) is recorded as failed and the sweep goes on.

The study lives in Optuna storage (``sweep.storage``, default ``sqlite:///<output.dir>/study.db``): a killed sweep
resumes where it stopped, and another process or machine given the same URL joins the same study. ``output.dir`` gets
``trials.csv``, ``sweep.png``, ``sweep.json`` and ``best/``: the winning trial's own best checkpoint.
"""

from __future__ import annotations

import csv
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bertcls import jsonio
from bertcls.atomic import atomic_dir, remove
from bertcls.config import Config, load_config, resolve_split
from bertcls.errors import BertclsError, cli_errors, first_line, quiet_loading
from bertcls.metrics import LOWER_IS_BETTER
from bertcls.run_state import StopRun

# What a finished sweep leaves in output.dir (an earlier one is kept unless output.overwrite=true).
SWEEP_RESULTS = ("sweep.json", "trials.csv", "best")


class Pruned(StopRun):
    """A trial the pruner stopped."""


def flat_space(space: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{train: {lr: {low: .., high: ..}}}`` or ``{"train.lr": {...}}`` -> ``{"train.lr": {...}}``: a leaf is a list
    of choices or a mapping with ``low`` and ``high``."""
    flat = {}
    for key, value in space.items():
        name = f"{prefix}{key}"
        if isinstance(value, list) or (isinstance(value, dict) and "low" in value):
            flat[name] = value
        elif isinstance(value, dict):
            flat.update(flat_space(value, f"{name}."))
        else:
            raise BertclsError(
                f"sweep.space.{name}: give a list of choices or {{low: ..., high: ...}} (log, step optional), not "
                f"{value!r}"
            )
    return flat


def check_space(space: dict[str, Any]) -> None:
    """Every parameter's spec is usable, before any trial runs."""
    if not space:
        raise BertclsError(
            "sweep.space is empty; give what to vary, e.g. sweep.space.train.lr='{low: 1e-5, high: 1e-3, log: true}'"
        )
    for key, spec in space.items():
        if isinstance(spec, list):
            if not spec:
                raise BertclsError(f"sweep.space.{key}: the list of choices is empty")
            continue
        extra = set(spec) - {"low", "high", "log", "step"}
        ok = not extra and all(isinstance(spec.get(k), (int, float)) for k in ("low", "high"))
        if not ok or spec["low"] >= spec["high"] or (spec.get("log") and spec["low"] <= 0):
            raise BertclsError(
                f"sweep.space.{key}: {spec!r} is not a range; give low < high (both > 0 with log: true), and "
                "optionally log and step"
            )


def suggest(trial, key: str, spec: Any) -> Any:
    if isinstance(spec, list):
        return trial.suggest_categorical(key, spec)
    low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    if isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool):
        return trial.suggest_int(key, low, high, step=step or 1, log=log)
    return trial.suggest_float(key, float(low), float(high), step=step, log=log)


def override(key: str, value: Any) -> str:
    """A ``key=value`` override that OmegaConf reads back as ``value``."""
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if value is None:
        return f"{key}=null"
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"


def run_sweep(config: str | None, overrides: list[str], trials: int | None = None) -> dict[str, Any]:
    """Run (or resume, or join) the study; returns what ``sweep.json`` holds.

    Raises:
        BertclsError: no Optuna, an empty or bad ``sweep.space``, no validation split, an output folder that holds a
            finished sweep without ``output.overwrite``.
    """
    try:
        import optuna
    except ImportError as e:
        raise BertclsError("python -m bertcls.sweep needs Optuna: pip install 'bertcls[sweep]'") from e
    cfg = load_config(config, overrides)
    space = flat_space(cfg.sweep.space)
    check_space(space)
    check_values(config, overrides, space)
    if resolve_split(cfg.data, "validation") is None and cfg.data.validation_fraction <= 0:
        raise BertclsError("a sweep scores trials on a validation split: set data.validation or validation_fraction")
    total = trials or cfg.sweep.trials
    out = prepare_sweep_dir(cfg)
    storage = cfg.sweep.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    metric = cfg.eval.metric
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=storage,
        study_name=cfg.sweep.study_name,
        direction="minimize" if metric in LOWER_IS_BETTER else "maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=cfg.train.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3) if cfg.sweep.pruner == "median"
        else optuna.pruners.NopPruner(),
    )  # fmt: skip
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    study.set_user_attr("space", space)  # stop_when_all_tried reads it
    done = len(study.get_trials(states=ended))
    print(f"sweep: study '{cfg.sweep.study_name}' in {storage}: {done} of {total} trials done; optimising {metric}")
    start = time.perf_counter()
    if done < total:
        study.optimize(
            lambda trial: objective(trial, config, overrides, space, out, metric),
            catch=TRIAL_ERRORS,  # raised outside a trial's training (objective catches those itself)
            callbacks=[optuna.study.MaxTrialsCallback(total, states=ended), keep_best_checkpoints, stop_when_all_tried],
        )
    summary = summarize(study, metric, time.perf_counter() - start, out)
    write_outputs(study, summary, space, out)
    print(format_summary(summary, out))
    failed = summary["trials"].get("fail", 0)
    if failed:
        raise BertclsError(
            f"{failed} of {sum(summary['trials'].values())} trials failed (their errors are in {out / 'trials.csv'} "
            "and each trial's train.log); the results of the others are written"
        )
    return summary


# What a trial that fails on its data, its values or a non-finite loss raises; anything else is a bug and stops.
TRIAL_ERRORS = (BertclsError, ValueError, RuntimeError, FloatingPointError)


def check_values(config: str | None, overrides: list[str], space: dict[str, Any]) -> None:
    """Every value a trial can take (each choice; a range's ends) is one the config and the model accept, before
    the first trial: a refused choice is one line now, not a failed trial later.

    Raises:
        BertclsError: naming the key and the value.
    """
    from bertcls.model import HeadSpec

    for key, spec in space.items():
        for value in spec if isinstance(spec, list) else (spec["low"], spec["high"]):
            try:
                m = load_config(config, [*overrides, override(key, value)]).model
                HeadSpec(["a", "b"], m.pooling, m.dropout, m.hidden_sizes, m.activation, m.head_init, m.bias_init)
                HeadSpec(["a", "b"], head_init=m.head_init, bias_init=m.bias_init).check_inits()
            except BertclsError as e:
                raise BertclsError(f"sweep.space.{key}: the value {value!r} is refused: {e}") from e


def all_combinations(space: dict[str, Any]) -> int | None:
    """How many value sets a space of choices only has (None: a range, endless)."""
    if any(not isinstance(spec, list) for spec in space.values()):
        return None
    return math.prod(len(spec) for spec in space.values())


def same_values(study, trial, params: dict[str, Any]):
    """An earlier finished trial with exactly these values (a sampler may draw a value set again), or None."""
    import optuna

    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return next((t for t in study.get_trials(states=ended) if t.number != trial.number and t.params == params), None)


def stop_when_all_tried(study, trial) -> None:
    """Stop once every value set of a space of choices has been tried (a further trial would only repeat one)."""
    space = study.user_attrs.get("space")
    n = all_combinations(space) if space else None
    if n is None:
        return
    tried = {tuple(sorted(t.params.items())) for t in study.trials if t.state.is_finished()}
    if len(tried) >= n:
        study.stop()


def prepare_sweep_dir(cfg: Config) -> Path:
    """``output.dir``, checked: with the default storage an existing ``study.db`` is resumed, or with
    ``output.overwrite=true`` removed with the sweep's other files; results without a study to resume are kept."""
    out = Path(cfg.output.dir)
    default_storage = cfg.sweep.storage is None
    if cfg.output.overwrite and default_storage:
        remove(out / name for name in (*SWEEP_RESULTS, "study.db", "trials", "sweep.png"))
    held = [n for n in SWEEP_RESULTS if (out / n).exists()]
    if held and default_storage and not (out / "study.db").exists():
        raise BertclsError(f"output.dir {out} already holds sweep results ({', '.join(held)}); choose another "
                           "output.dir or set output.overwrite=true")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    return out


def objective(trial, config: str | None, overrides: list[str], space: dict[str, Any], out: Path, metric: str) -> float:
    from bertcls.train import train

    params = {key: suggest(trial, key, spec) for key, spec in space.items()}
    earlier = same_values(trial.study, trial, params)
    if earlier is not None:
        # A value set already tried is never trained twice: its result stands for this draw too.
        import optuna

        print(f"trial {trial.number}: the values of trial {earlier.number} again; not run twice")
        if earlier.state == optuna.trial.TrialState.COMPLETE:
            return float(earlier.value)
        raise optuna.TrialPruned()
    trial_dir = out / "trials" / f"trial-{trial.number}"
    trial.set_user_attr("output_dir", str(trial_dir))
    print(f"trial {trial.number}: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    chosen = [override(k, v) for k, v in params.items()]
    cfg = load_config(config, [*overrides, *chosen, f"output.dir={trial_dir}", "output.overwrite=true"])

    def report(step: int, validation: dict[str, float]) -> None:
        trial.report(validation[metric], step)
        if trial.should_prune():
            raise Pruned(f"pruned at step {step}")

    try:
        result = train(cfg, on_validation=report)
        value = result["best"]["value"]
        if value is None or not math.isfinite(value):
            raise FloatingPointError(f"validation {metric} is {value}")
    except Pruned:
        import optuna

        raise optuna.TrialPruned() from None
    except TRIAL_ERRORS as e:
        # One line, and the sweep goes on: a failed trial is counted, and the sweep exits non-zero at its end.
        print(f"trial {trial.number} failed: {type(e).__name__}: {first_line(e)}")
        trial.set_user_attr("error", f"{type(e).__name__}: {first_line(e)}")
        return math.nan  # Optuna records a nan objective as a failed trial
    return float(value)


def keep_best_checkpoints(study, trial) -> None:
    """Only the best trial so far keeps its checkpoints: the others' ``best/``, ``last/`` and resumable checkpoints
    are removed as the sweep goes (their logs, metrics and curves stay)."""
    try:
        best = study.best_trial.number
    except ValueError:  # no finished trial yet
        best = None
    for t in study.trials:
        folder = t.user_attrs.get("output_dir")
        if folder and t.number != best and Path(folder).is_dir():
            for name in ("best", "last", "checkpoints", "linear_probe"):
                shutil.rmtree(Path(folder) / name, ignore_errors=True)


def summarize(study, metric: str, wall: float, out: Path) -> dict[str, Any]:
    import optuna

    states = {s.name.lower(): len(study.get_trials(states=(s,))) for s in optuna.trial.TrialState}
    summary: dict[str, Any] = {"study": study.study_name, "metric": metric, "direction": study.direction.name.lower()}
    summary["trials"] = {k: v for k, v in states.items() if v}
    summary["wall_s_this_process"] = wall
    try:
        best = study.best_trial
    except ValueError:
        summary["best"] = None
        return summary
    summary["best"] = {"trial": best.number, "value": best.value, "params": best.params}
    source = Path(best.user_attrs.get("output_dir", "")) / "best"
    if source.is_dir():
        with atomic_dir(out / "best") as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        summary["best"]["checkpoint"] = str(out / "best")
    else:  # the winner ran in another process or machine: its checkpoint is in that one's output.dir
        summary["best"]["checkpoint"] = str(source)
    return summary


def write_outputs(study, summary: dict[str, Any], space: dict[str, Any], out: Path) -> None:
    from bertcls.plots import plot_sweep

    rows = []
    for t in study.trials:
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": t.value, "duration_s": duration,
                     **{k: t.params.get(k) for k in space}, "error": t.user_attrs.get("error", "")})  # fmt: skip
    with (out / "trials.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["trial", "state", "value", "duration_s", *space, "error"])
        w.writeheader()
        w.writerows(rows)
    plot_sweep(rows, list(space), summary["metric"], out / "sweep.png")
    (out / "sweep.json").write_text(jsonio.dumps(summary, indent=2, default=str))


def format_summary(summary: dict[str, Any], out: Path) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in summary["trials"].items())
    lines = [f"sweep of {summary['metric']} ({summary['direction']}): {counts}"]
    best = summary.get("best")
    if best:
        params = ", ".join(f"{k}={v}" for k, v in best["params"].items())
        lines.append(f"best: trial {best['trial']}, {summary['metric']} {best['value']:.4f} with {params}")
        lines.append(f"its checkpoint: {best['checkpoint']}")
    lines.append(f"trials.csv, sweep.png and sweep.json in {out}")
    return "\n".join(lines)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    import argparse

    about = "Hyperparameter search with Optuna over any config keys (see docs/sweep.md)."
    parser = argparse.ArgumentParser(prog="python -m bertcls.sweep", description=about)
    parser.add_argument("--config", help="YAML file with config values and a sweep: section")
    parser.add_argument("--trials", type=int, default=None, help="trials in the study (default: sweep.trials)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value pairs; they win over the config file")
    # Intermixed: overrides may stand before and after options (train.max_steps=1 --config F output.dir=x).
    args = parser.parse_intermixed_args(argv)
    if args.trials is not None and args.trials < 1:
        raise BertclsError(f"--trials must be at least 1, got {args.trials}")
    quiet_loading()
    run_sweep(args.config, args.overrides, args.trials)
    from bertcls.train import close_distributed

    close_distributed()


if __name__ == "__main__":
    sys.exit(main())
