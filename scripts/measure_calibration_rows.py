"""How many validation rows a temperature needs (docs/fewshot.md, "Why these thresholds").

For each checkpoint of a frozen MiniLM head (mean pooling) trained on Rotten Tomatoes, T is fitted on n rows drawn from
the shipped validation split (200 draws per n) and scored on all 1,066 rows. The features come from the feature cache
(run the checkpoints' training first, so the validation split's entry exists).

    python scripts/measure_calibration_rows.py runs/frozen-full/best runs/k16/round-0/best
"""

from __future__ import annotations

import argparse
import glob

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from bertcls.cache import DEFAULT_CACHE_DIR
from bertcls.calibration import calibrated, fit_temperature
from bertcls.model import load_checkpoint

VALIDATION = "/work/shared/data/rotten_tomatoes/validation.csv"


def validation_features() -> torch.Tensor:
    for path in glob.glob(str(DEFAULT_CACHE_DIR / "*.safetensors")):
        with safe_open(path, "pt") as f:
            meta = f.metadata()
        if meta.get("pooling") == "mean" and meta.get("source") == VALIDATION:
            return load_file(path)["features"]
    raise SystemExit(f"no mean-pooled cache entry for {VALIDATION}: train a frozen run with it first")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    a = p.parse_args()
    feats, labels = validation_features(), pd.read_csv(VALIDATION).label
    rng = np.random.default_rng(0)
    for checkpoint in a.checkpoints:
        model = load_checkpoint(checkpoint)
        with torch.inference_mode():
            probs = model.probabilities(model.head(feats.float())).numpy()
        gold = np.array([model.labels.index(v) for v in labels])

        def nll(q, gold=gold):
            return float(-np.log(np.clip(q[np.arange(len(gold)), gold], 1e-12, 1)).mean())

        t_all = fit_temperature(probs, gold, False)
        print(f"{checkpoint}: T on all {len(gold)} rows {t_all:.3f}, NLL {nll(probs):.4f} -> "
              f"{nll(calibrated(probs, t_all, False)):.4f}")  # fmt: skip
        for n in (2, 4, 10, 30, 100, 300):
            ts, worse = [], []
            for _ in range(200):
                rows = rng.choice(len(gold), n, replace=False)
                t = fit_temperature(probs[rows], gold[rows], False)
                ts.append(t)
                worse.append(nll(calibrated(probs, t, False)) - nll(probs))
            print(
                f"  n={n:4d}: T 5-95% {np.percentile(ts, 5):.3f}-{np.percentile(ts, 95):.3f}; NLL change on all rows: "
                f"95th pct {np.percentile(worse, 95):+.4f}; draws that make it worse {np.mean(np.array(worse) > 0):.2f}"
            )


if __name__ == "__main__":
    main()
