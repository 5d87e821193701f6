"""Heads on a contrastively tuned body: which one scores best on held-out rows (docs/fewshot.md, "Learning curve").

    python scripts/compare_fewshot_heads.py RUN/best k16-seed1.csv /work/shared/data/rotten_tomatoes/validation.csv

Embeds the training rows, the held-out rows and the label texts (``--label-descriptions``, by default the run's
default, ``data.label_descriptions``) with the checkpoint's own encoder and pooling once,
then scores, without training the body again: the label-name prior (what ``train.recipe=contrastive`` fits), the
class centroids of the training rows, mixes of the two, and logistic regression without a prior (SetFit's head).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from bertcls.config import DataConfig
from bertcls.init import label_texts
from bertcls.model import load_checkpoint


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("train", help="the k-shot file the checkpoint was trained on (text,label)")
    p.add_argument("heldout", help="rows to score (text,label)")
    p.add_argument(
        "--label-descriptions",
        default=DataConfig.label_descriptions,
        help="the run's data.label_descriptions, a template with {} (default: the run's default); null: the bare names",
    )
    a = p.parse_args()
    described = None if a.label_descriptions == "null" else a.label_descriptions
    model = load_checkpoint(a.checkpoint)
    train, held = pd.read_csv(a.train), pd.read_csv(a.heldout)
    ids = {label: i for i, label in enumerate(model.labels)}
    f_train, f_held = (model.embed(list(map(str, d.text))).numpy() for d in (train, held))
    f_names = model.embed(label_texts(list(model.labels), described)).numpy()
    y_train = train.label.astype(str).map(ids).to_numpy()
    y_held = held.label.astype(str).map(ids).to_numpy()
    centroids = np.stack([f_train[y_train == c].mean(0) for c in range(len(model.labels))])

    def accuracy(w: np.ndarray) -> float:
        return float(((f_held @ w.T).argmax(1) == y_held).mean())

    scores = {"label-name prior": accuracy(unit(f_names)), "class centroids": accuracy(unit(centroids))}
    for share in (0.25, 0.5, 0.75):
        scores[f"{share:g} centroid + prior"] = accuracy(unit((1 - share) * unit(f_names) + share * unit(centroids)))
    lr = LogisticRegression(C=1.0, max_iter=1000).fit(f_train, y_train)
    scores["logistic regression, no prior"] = float((lr.predict(f_held) == y_held).mean())
    for name, value in scores.items():
        print(f"{name}: {value:.4f}")


if __name__ == "__main__":
    main()
