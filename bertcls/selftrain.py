"""``python -m bertcls.selftrain``: self-training on texts without labels (``data.unlabeled``).

Round 0 is the run ``python -m bertcls.train`` would make on the labelled rows (``train(cfg, data)``, whatever recipe
the config chooses). Each later round labels every unlabelled text with the previous round's best model (its
probabilities, calibrated when that run calibrated), adds the chosen ones to the labelled rows under those labels, and
trains a fresh model on the lot into ``output.dir/round-R``. Pseudo-labels are re-made every round, so a text the
model changed its mind about changes label. This driver calls the recipe; the recipe never calls it back.

Which texts join (``selftrain.select``): ``fraction`` (default) takes, per class, the texts predicted as that class
with the highest probability of it, ``R x selftrain.fraction`` of the unlabelled texts in round R, shared between the
classes as the labelled rows are; ``threshold`` takes every text whose top probability is at least
``selftrain.threshold``. Per-class quotas keep a model that leans to one class from feeding itself more of that
class, and need no calibrated probability (a few-shot run has no validation split to calibrate on); see
docs/fewshot.md.

With a frozen backbone on the feature cache the unlabelled texts go through the backbone once for every round (the
features of the labelled and unlabelled texts are stored as one split, whose subsets each round trains on).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bertcls.config import Config, ModelConfig
from bertcls.data import Split, load_split
from bertcls.errors import BertclsError, cli_errors
from bertcls.run_data import RunData, load_data
from bertcls.small_data import majority_rate, near_chance_line

SELFTRAIN_FILES = ("metrics.json", "selftrain.png")


def read_unlabeled(cfg: Config) -> tuple[Split, list[Any] | None]:
    """The texts of ``data.unlabeled`` (a table with ``data.text_column``, or a ``.txt`` file with one text per
    line; empty texts dropped), and the file's labels when it has ``data.label_column`` (reported, never trained on)."""
    source = cfg.data.unlabeled
    if not source:
        raise BertclsError(
            "self-training needs data.unlabeled: a file of texts without labels (e.g. data.unlabeled=texts.txt)"
        )
    if source.endswith(".txt"):
        path = Path(source)
        if not path.is_file():
            raise BertclsError(f"data.unlabeled: {source} does not exist")
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        split, labels = Split(texts, None, source=source), None
    else:
        split = load_split(source, cfg.data.text_column, cfg.data.label_column, require_labels=False)
        labels = split.labels
    keep = [i for i, t in enumerate(split.texts) if str(t).strip()]
    if not keep:
        raise BertclsError(f"data.unlabeled: {source} holds no texts")
    texts = [str(split.texts[i]) for i in keep]
    return Split(texts, None, source=source), [labels[i] for i in keep] if labels is not None else None


def check_options(cfg: Config) -> None:
    d = cfg.data
    if d.task != "single_label" or d.text_pair_column or d.streaming:
        raise BertclsError(
            "self-training works on single texts with one label each (data.task=single_label, no "
            "data.text_pair_column, data.streaming=false)"
        )
    if cfg.train.seeds or cfg.train.resume_from:
        raise BertclsError("self-training runs its rounds one after another: drop train.seeds and train.resume_from")
    from bertcls.recipes import RECIPES

    if cfg.selftrain.recipe != "same" and cfg.selftrain.recipe not in RECIPES:
        names = ", ".join(["same", *RECIPES])
        raise BertclsError(
            f"selftrain.recipe={cfg.selftrain.recipe!r} is not a recipe; choose one of: {names} (auto is for "
            "train.recipe, which chooses round 0's by the labelled rows)"
        )


def selftrain(cfg: Config) -> dict[str, Any]:
    """Run ``selftrain.rounds`` rounds of self-training; returns what ``output.dir/metrics.json`` holds."""
    check_options(cfg)
    out = Path(cfg.output.dir)
    if (out / "metrics.json").exists() and not cfg.output.overwrite:
        raise BertclsError(
            f"output.dir {out} already holds results; choose another output.dir or set output.overwrite=true"
        )
    unlabeled, unlabeled_gold = read_unlabeled(cfg)
    data = load_data(cfg)
    labeled = data.train
    cfg = fixed_recipe(cfg, labeled)
    pool = pooled(labeled, unlabeled, data.labels)
    features = Pseudo(cfg, pool, len(labeled))
    if features.cached(cfg):
        features.unlabeled_features(data.labels)
    gold_ids = [data.labels.index(str(v)) for v in labeled.labels]
    prior = np.bincount(gold_ids, minlength=len(data.labels)) / len(gold_ids)
    rounds: list[dict[str, Any]] = []
    pseudo = np.full(len(unlabeled), -1)
    for r in range(cfg.selftrain.rounds + 1):
        train_split = round_split(pool, len(labeled), gold_ids, pseudo, data.labels)
        round_cfg, round_data = round_setup(cfg, data, r, out, train_split)
        print(f"self-training round {r}: {len(labeled)} labelled + {int((pseudo >= 0).sum())} pseudo-labelled rows")
        result = train_round(round_cfg, round_data)
        rounds.append(round_record(r, round_cfg.train.recipe, result, pseudo, data.labels, unlabeled_gold))
        cfg = fixed_centroids(cfg, result)
        print(f"self-training round {r}: {describe(rounds[-1])}")
        if r == cfg.selftrain.rounds:
            break
        probs = features.probabilities(out / f"round-{r}" / "best", round_cfg)
        pseudo = choose(probs, prior, r + 1, cfg)
    summary = {"rounds": rounds, "model": str(out / f"round-{cfg.selftrain.rounds}" / "best")}
    if "test" in rounds[-1] and data.test is not None:
        majority = majority_rate([data.labels.index(str(v)) for v in data.test.labels])
        line = near_chance_line(cfg, rounds[-1]["test"]["accuracy"], majority, "test", int(np.bincount(gold_ids).min()))
        if line:
            summary["near_chance"] = line
            print(line)
    write_outputs(out, summary)
    return summary


def fixed_recipe(cfg: Config, labeled: Split) -> Config:
    """``train.recipe=auto`` chosen once, by the labelled rows: a later round's pseudo-labels are not examples a
    user gave, so they never move it (thousands of them would otherwise pick full fine-tuning from round 1)."""
    if cfg.train.recipe != "auto":
        return cfg
    from bertcls.recipes import resolve

    chosen = resolve(cfg, list(labeled.labels), lambda line: print(f"self-training: {line}"))
    return replace(cfg, train=replace(cfg.train, recipe=chosen.train.recipe))


def fixed_centroids(cfg: Config, result: dict[str, Any]) -> Config:
    """``train.contrastive_centroids=auto`` decided once, by round 0's labelled rows, for the same reason."""
    if cfg.train.contrastive_centroids != "auto" or "contrastive_centroids" not in result:
        return cfg
    return replace(cfg, train=replace(cfg.train, contrastive_centroids=result["contrastive_centroids"]))


def applied(cfg: Config) -> Config:
    """The config a round's run trains with (its recipe applied: e.g. ``frozen`` mean-pools a frozen backbone), which
    is how the unlabelled texts must be read to be scored by that run's head."""
    from bertcls.recipes import RECIPES

    return RECIPES[cfg.train.recipe](cfg) if cfg.train.recipe in RECIPES else cfg


def pooled(labeled: Split, unlabeled: Split, labels: list[str]) -> Split:
    """The labelled texts then the unlabelled ones, as one split: each round's training rows are a subset of it, so
    a frozen backbone's features are computed (and cached) once for all rounds."""
    texts = [str(t) for t in labeled.texts] + list(unlabeled.texts)
    placeholder = [labels[0]] * len(unlabeled)  # never trained on: each round's subset carries its own labels
    return Split(texts, list(labeled.labels) + placeholder, None, f"{labeled.source}+{unlabeled.source}")


def round_setup(cfg: Config, data: RunData, r: int, out: Path, train_split: Split) -> tuple[Config, RunData]:
    """Round ``r``'s config (its own folder) and data. After round 0 the run's own near-chance line is off (it would
    count pseudo-labels as examples; this driver compares the rounds instead), the round trains ``selftrain.recipe``
    where that names one, and a small file's plan line says that the rows it cross-validates on hold pseudo-labels."""
    round_cfg = replace(cfg, output=replace(cfg.output, dir=str(out / f"round-{r}")))
    if r == 0:
        return round_cfg, replace(data, train=train_split)
    later = cfg.train.recipe if cfg.selftrain.recipe == "same" else cfg.selftrain.recipe
    round_cfg = replace(
        round_cfg, eval=replace(cfg.eval, near_chance_margin=0.0), train=replace(cfg.train, recipe=later)
    )
    if cfg.selftrain.start == "previous":
        round_cfg = replace(round_cfg, model=continued(cfg.model, out / f"round-{r - 1}" / "best"))
    no_cut = data.no_cut and (
        f"validation: none (self-training round {r}: {len(data.train)} labelled rows, too few to cut one; any "
        "cross-validation runs on labelled and pseudo-labelled rows together)"
    )
    return round_cfg, replace(data, train=train_split, no_cut=no_cut or None)


def continued(model: ModelConfig, checkpoint: Path) -> ModelConfig:
    """``model.*`` that start a round from ``checkpoint`` (``selftrain.start=previous``): its weights and its head as
    trained, so the head options are the checkpoint's; trainability and dropout stay the run's."""
    from bertcls.serialization import saved_head_options

    return replace(model, name_or_path=str(checkpoint), new_head=False, **saved_head_options(checkpoint))


def round_split(pool: Split, n_labeled: int, gold_ids, pseudo: np.ndarray, labels: list[str]) -> Split:
    rows = np.concatenate([np.arange(n_labeled), n_labeled + np.flatnonzero(pseudo >= 0)])
    split = pool.subset(rows)
    split.labels = [labels[i] for i in gold_ids] + [labels[i] for i in pseudo[pseudo >= 0]]
    return split


def train_round(cfg: Config, data: RunData) -> dict[str, Any]:
    from bertcls.train import train

    return train(cfg, data)


def choose(probs: np.ndarray, prior: np.ndarray, round_: int, cfg: Config) -> np.ndarray:
    """Each unlabelled row's pseudo-label id, or -1 where it does not join training (``selftrain.select``)."""
    s = cfg.selftrain
    top, decided = probs.max(1), probs.argmax(1)
    chosen = np.full(len(probs), -1)
    if s.select == "threshold":
        keep = top >= s.threshold
        chosen[keep] = decided[keep]
        return chosen
    total = min(1.0, round_ * s.fraction) * len(probs)
    for c, share in enumerate(prior):
        mine = np.flatnonzero(decided == c)
        take = mine[np.argsort(-probs[mine, c], kind="stable")[: int(round(total * share))]]
        chosen[take] = c
    return chosen


class Pseudo:
    """The unlabelled rows' probabilities under a round's best model: its head on the pooled split's stored features
    when the backbone is frozen on the feature cache (no further backbone pass), else the model on the texts."""

    def __init__(self, cfg: Config, pool: Split, first_unlabeled: int):
        self.cfg, self.pool, self.first = applied(cfg), pool, first_unlabeled
        self.features = None

    @staticmethod
    def cached(round_cfg: Config) -> bool:
        """Whether a round of this config is a head on the stored features of the untuned body. A contrastive round
        tunes its own backbone and a fine-tuned one trains it: the stored features would not be theirs."""
        from bertcls.train import uses_cache

        return round_cfg.train.recipe != "contrastive" and uses_cache(applied(round_cfg))

    def probabilities(self, checkpoint: Path, round_cfg: Config) -> np.ndarray:
        import torch

        from bertcls.model import load_checkpoint

        model = load_checkpoint(checkpoint)
        if not self.cached(round_cfg):
            texts = list(self.pool.texts[self.first :])
            return model.predict_proba(texts, batch_size=self.cfg.eval.batch_size, precision="auto").numpy()
        feats = self.unlabeled_features(model.labels)
        with torch.inference_mode():
            return model.probabilities(model.head(feats.float())).numpy()

    def unlabeled_features(self, labels: list[str]):
        """The unlabelled rows' features, from the pooled split's cache entry (``prepare``)."""
        if self.features is None:
            self.features = self.prepare(labels)[self.first :]
        return self.features

    def prepare(self, labels: list[str]):
        """Store the pooled split's features under its own cache key, joined from the labelled and the unlabelled
        texts' entries (a text's features do not depend on the texts beside it), so that neither the rounds nor a
        rerun with other labelled rows passes the unlabelled texts through the backbone again. The backbone is built
        and keyed as train() builds it."""
        from accelerate import PartialState
        from safetensors.torch import save_file

        from bertcls.atomic import atomic_file
        from bertcls.cache import cache_key, load_or_compute
        from bertcls.tasks import get_task
        from bertcls.train import cache_dir, resolve_mixed_precision, setup_model

        state = PartialState()
        backbone, cfg = setup_model(self.cfg, labels, get_task(self.cfg.data.task), state)
        backbone.to(state.device)
        precision, folder = resolve_mixed_precision(cfg.train.mixed_precision), cache_dir(cfg)
        length, batch = cfg.data.max_length, cfg.eval.batch_size
        path = folder / f"{cache_key(backbone, self.pool, length, precision)}.safetensors"
        if not path.is_file():
            parts = (self.pool.subset(range(self.first)), self.pool.subset(range(self.first, len(self.pool))))
            for part, name in zip(parts, (self.cfg.data.train, self.cfg.data.unlabeled)):
                part.source = name
            import torch

            feats = torch.cat(
                [load_or_compute(backbone, p, length, precision, state, folder, print, batch)[0] for p in parts]
            )
            if state.is_main_process:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_file(path) as tmp:
                    meta = {"source": self.pool.source, "rows": str(len(self.pool)), "pooling": backbone.spec.pooling}
                    save_file({"features": feats.contiguous()}, tmp, metadata=meta)
            state.wait_for_everyone()
        return load_or_compute(backbone, self.pool, length, precision, state, folder, print, batch)[0]


def round_record(
    r: int, recipe: str, result: dict[str, Any], pseudo: np.ndarray, labels: list[str], gold
) -> dict[str, Any]:
    """What metrics.json keeps of a round: its recipe, its scores, and the pseudo-labelled rows it trained on per
    class (with their accuracy when the unlabelled file had labels)."""
    added = {name: int((pseudo == i).sum()) for i, name in enumerate(labels)}
    record: dict[str, Any] = {"round": r, "recipe": recipe, "added": added, "added_total": int((pseudo >= 0).sum())}
    best = result.get("best", {})
    if best.get("step") is not None:
        record["validation"] = {"metric": best["metric"], "value": best["value"]}
    cv = result.get("small_data", {}).get("cv")
    if cv:
        record["cv"] = {"accuracy": cv["accuracy"], "loss": cv["loss"], "C": cv["C"]}
    if "test" in result:
        record["test"] = {k: result["test"][k] for k in ("accuracy", "macro_f1", "loss") if k in result["test"]}
    if gold is not None and record["added_total"]:
        chosen = np.flatnonzero(pseudo >= 0)
        right = sum(str(gold[i]) == labels[pseudo[i]] for i in chosen)
        record["pseudo_label_accuracy"] = right / len(chosen)
    record["train_time_s"] = result.get("train_time_s")
    return record


def describe(record: dict[str, Any]) -> str:
    parts = [f"added {record['added_total']} ({', '.join(f'{k} {v}' for k, v in record['added'].items())})"]
    if "pseudo_label_accuracy" in record:
        parts.append(f"pseudo-label accuracy {record['pseudo_label_accuracy']:.4f}")
    if "validation" in record:
        parts.append(f"validation {record['validation']['metric']} {record['validation']['value']:.4f}")
    if "cv" in record:
        parts.append(f"cross-validated accuracy {record['cv']['accuracy']:.4f}")
    if "test" in record:
        parts.append(f"test accuracy {record['test']['accuracy']:.4f}")
    return "; ".join(parts)


def write_outputs(out: Path, summary: dict[str, Any]) -> None:
    from bertcls.plots import plot_selftrain

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    plot_selftrain(summary["rounds"], out / "selftrain.png")
    print(f"self-training done: model {summary['model']}, rounds in {out}/metrics.json and {out}/selftrain.png")


@cli_errors
def main(argv: list[str] | None = None) -> None:
    from bertcls.train import run_command

    description = "Self-training: rounds of training on the labelled rows plus pseudo-labelled data.unlabeled texts."
    run_command(argv, "python -m bertcls.selftrain", description, selftrain)


if __name__ == "__main__":
    sys.exit(main())
