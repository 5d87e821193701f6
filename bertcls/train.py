"""``python -m bertcls.train``: fine-tune a classifier with an accelerate-driven loop.

``train(cfg)`` is what the command line and notebooks call: it applies ``train.recipe`` (``bertcls.recipes``) and
hands over to ``bertcls.seeds`` (``train.seeds``) or ``bertcls.drivers`` (collapse retries, LP-FT), which run the
one-run recipe, ``bertcls.run``. ``main()`` only parses the command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from bertcls import recipes
from bertcls.config import Config, load_config, options_help

# What scripts and tests import from here, wherever it lives.
from bertcls.drivers import train_one
from bertcls.errors import BertclsError, cli_errors, quiet_loading
from bertcls.inference import (
    forward_features,
    forward_tokens,
)
from bertcls.optim import (
    backward_group,
    build_optimizer,
    micro_batch_groups,
    unfreeze_for_epoch,
)
from bertcls.outputs import RUN_FILES, RUN_RESULTS, check_output_dir
from bertcls.precision import resolve as resolve_mixed_precision  # scripts/ import it from here too
from bertcls.run import (  # the recipe's names that scripts and tests import from here
    cache_dir,
    close_distributed,
    optimizer_step,
    setup,
    setup_model,
    uses_cache,
)
from bertcls.run_data import RunData, load_data, make_train_loader
from bertcls.run_state import RunLog
from bertcls.seeds import check_seeds_dir, train_seeds
from bertcls.speed import allocator

__all__ = [
    "cache_dir",
    "close_distributed",
    "optimizer_step",
    "setup",
    "setup_model",
    "uses_cache",
    "RUN_FILES",
    "RUN_RESULTS",
    "backward_group",
    "build_optimizer",
    "forward_features",
    "forward_tokens",
    "load_data",
    "main",
    "make_train_loader",
    "micro_batch_groups",
    "resolve_mixed_precision",
    "train",
    "unfreeze_for_epoch",
]


# ---------------------------------------------------------------- the recipe


def train(
    cfg: Config, data: RunData | None = None, on_validation: Callable[[int, dict[str, float]], Any] | None = None
) -> dict[str, Any]:
    """Train a classifier as ``cfg`` says; returns the metrics written to ``output.dir/metrics.json``. ``data``: the
    splits already read and checked (``run_data.load_data``; cross-validation passes each fold's), instead of
    reading ``cfg.data``'s files. ``on_validation(step, metrics)`` is called after each validation (a sweep reports
    to its pruner there, and may end the run by raising ``run_state.StopRun``).

    Raises:
        BertclsError: bad data, labels, options or output folder (one-line messages).
    """
    if cfg.train.speedups:  # before the first bf16 matmul: memory that does not grow with new batch lengths
        allocator.cap_primitive_cache()
    threads = torch.get_num_threads()
    # Before the recipe is chosen and said: a folder that must not be written is the run's one line of output.
    if cfg.train.seeds:
        check_seeds_dir(cfg)
    else:
        check_output_dir(cfg)
    cfg, data = resolve_recipe(cfg, data)
    try:
        if cfg.train.seeds:
            return train_seeds(cfg, data)
        return train_one(cfg, data, on_validation)
    except RuntimeError as e:
        if not lost_peer(e):
            raise
        rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
        raise BertclsError(
            f"process {rank} of {world}: another process stopped answering ({str(e).splitlines()[0][-120:]}); it "
            f"died or hangs, see its own output (waited at most train.dist_timeout={cfg.train.dist_timeout:g}s)"
        ) from e
    finally:
        torch.set_num_threads(threads)  # the cached path runs on one thread; a notebook gets its setting back


def resolve_recipe(cfg: Config, data: RunData | None) -> tuple[Config, RunData | None]:
    """``train.recipe`` applied (``bertcls.recipes``); ``auto`` reads the data first to count examples per class (the
    data read is returned, so the run does not read it again)."""
    if cfg.train.recipe not in recipes.RECIPES and cfg.train.recipe != "auto":
        raise BertclsError(f"train.recipe: '{cfg.train.recipe}' is not one of auto, {', '.join(recipes.RECIPES)}")
    main = int(os.environ.get("RANK", "0")) == 0
    log = RunLog(None, main)  # printed now; the run's train.log starts with these lines (RunData.said)
    if cfg.train.recipe == "auto" and data is None and not cfg.data.streaming:
        data = load_data(cfg, log)
    train_labels = None
    if data is not None and data.train is not None:
        train_labels = list(data.train.labels)
        v = data.validation
        if v is not None and v.base is not None and v.base is data.train.base:  # a cut of the same file counts too
            train_labels += list(v.labels)
    cfg = recipes.resolve(cfg, train_labels, log)
    if data is not None and log.held:
        data = replace(data, said=[*data.said, *log.held])
    return cfg, data


def lost_peer(e: RuntimeError) -> bool:
    """Whether a collective failed because another process died or stopped answering (gloo raises plain
    RuntimeErrors for both; NCCL a DistBackendError)."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    import torch.distributed as dist

    text = str(e)
    signs = ("Timed out waiting", "Connection closed by peer", "Connection reset by peer", "Broken pipe")
    return isinstance(e, dist.DistError) or any(s in text for s in signs)


# ---------------------------------------------------------------- command line


TRAIN_HELP = "Fine-tune a BERT-family classifier. With no arguments: the offline demo (configs/default.yaml)."


def parse_args(
    argv: list[str] | None = None, prog: str = "python -m bertcls.train", description: str = TRAIN_HELP
) -> tuple[str | None, list[str]]:
    """``--config FILE`` and ``key=value`` overrides, for ``bertcls.train`` and the commands built on it (cv)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="overrides: key.sub=value, e.g. data.train=my.csv train.epochs=2 output.dir=runs/a\n\n" + options_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file with config values (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value pairs; they win over the config file")
    # Intermixed: overrides may stand before and after options (train.max_steps=1 --config F output.dir=x).
    args = parser.parse_intermixed_args(argv)
    return args.config, args.overrides


def run_command(argv: list[str] | None, prog: str, description: str, command: Callable[[Config], Any]) -> None:
    """The shell of a command built on the training config (cv, selftrain): parse, load, quiet the loaders, run,
    and close the process group only after a run that returned."""
    config, overrides = parse_args(argv, prog=prog, description=description)
    cfg = load_config(config, overrides)
    quiet_loading()
    command(cfg)
    close_distributed()


@cli_errors
def main(argv: list[str] | None = None) -> None:
    config, overrides = parse_args(argv)
    cfg = load_config(config, overrides)
    if argv is None and cfg.train.speedups:  # the command line (not a call from Python): jemalloc when found
        allocator.rerun_under_jemalloc()
    quiet_loading()
    train(cfg)
    # Only after a run that returned: an exception's traceback still holds the DDP wrapper (see finish_run).
    close_distributed()


if __name__ == "__main__":
    sys.exit(main())
