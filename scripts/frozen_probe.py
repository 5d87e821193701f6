"""A frozen bertcls run at its defaults against a tuned scikit-learn probe on the same cached features.

    python scripts/frozen_probe.py                                   # Rotten Tomatoes (shipped), configs/frozen.yaml
    python scripts/frozen_probe.py --train tr.csv --validation va.csv --test te.csv --label-column party

The scikit-learn probe is LogisticRegression (lbfgs, max_iter 5000) with C tuned on the validation split over
bertcls.probe.C_GRID, trained on exactly the features the run trains its head on (read from the feature cache the
run filled). Prints test accuracy of both, and the run's wall time cold and warm (whole ``train()`` call).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bertcls_run(args, out: Path, cache: Path, extra: list[str]) -> tuple[dict, float]:
    from bertcls.config import load_config
    from bertcls.train import train

    overrides = [f"output.dir={out}", "output.overwrite=true", f"train.cache_dir={cache}", *extra]
    for key in ("train", "validation", "test"):
        if getattr(args, key):
            overrides.append(f"data.{key}={getattr(args, key)}")
    for key in ("text_column", "label_column"):
        overrides.append(f"data.{key}={getattr(args, key)}")
    start = time.perf_counter()
    result = train(load_config(ROOT / "configs" / "frozen.yaml", overrides + args.overrides))
    return result, time.perf_counter() - start


def split_features(cfg, out: Path, cache: Path):
    """(features, label ids) of train/validation/test, from the cache the run filled."""
    from accelerate import Accelerator

    from bertcls import BertForTextClassification
    from bertcls.cache import load_or_compute
    from bertcls.precision import resolve
    from bertcls.tasks import get_task
    from bertcls.train import load_data

    data = load_data(cfg, log=lambda _m: None)
    model = BertForTextClassification.from_pretrained(out / "best")
    accelerator = Accelerator(cpu=True)
    precision = resolve(cfg.train.mixed_precision)
    found = {}
    for name in ("train", "validation", "test"):
        split = getattr(data, name)
        feats, hit = load_or_compute(model, split, model.max_length, precision, accelerator, cache, lambda _m: None)
        assert hit, f"{name} features were not in the cache"
        found[name] = (feats.float().numpy(), np.asarray(get_task(model.task).targets(split.labels, data.labels)))
    return found


def sklearn_probe(found) -> tuple[float, float, float]:
    """(test accuracy, chosen C, fit seconds over the grid) of LogisticRegression tuned on validation."""
    from sklearn.linear_model import LogisticRegression

    from bertcls.probe import C_GRID

    (xt, yt), (xv, yv), (xs, ys) = found["train"], found["validation"], found["test"]
    best, start = None, time.perf_counter()
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=5000).fit(xt, yt)
        acc = (clf.predict(xv) == yv).mean()
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    elapsed = time.perf_counter() - start
    return float((best[2].predict(xs) == ys).mean()), best[1], elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train")
    p.add_argument("--validation")
    p.add_argument("--test")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--json", help="write the numbers here too")
    p.add_argument("overrides", nargs="*", help="more key=value overrides for the bertcls run")
    args = p.parse_args()
    from bertcls.config import load_config

    tmp = Path(tempfile.mkdtemp(prefix="frozen_probe-"))
    cache = tmp / "cache"
    cold, cold_s = bertcls_run(args, tmp / "cold", cache, [])
    warm, warm_s = bertcls_run(args, tmp / "warm", cache, [])
    cfg = load_config(ROOT / "configs" / "frozen.yaml", [f"train.cache_dir={cache}"] + args.overrides)
    for key in ("train", "validation", "test"):
        if getattr(args, key):
            setattr(cfg.data, key, getattr(args, key))
    cfg.data.text_column, cfg.data.label_column = args.text_column, args.label_column
    found = split_features(cfg, tmp / "warm", cache)
    sk_acc, sk_c, sk_s = sklearn_probe(found)
    row = {
        "bertcls_test_accuracy": warm["test"]["accuracy"],
        "bertcls_cold_s": cold_s,
        "bertcls_warm_s": warm_s,
        "bertcls_best": warm["best"],
        "sklearn_test_accuracy": sk_acc,
        "sklearn_C": sk_c,
        "sklearn_grid_s": sk_s,
        "train_rows": len(found["train"][1]),
    }
    print(
        f"bertcls frozen defaults: test accuracy {row['bertcls_test_accuracy']:.4f} (train() {cold_s:.1f} s cold, "
        f"{warm_s:.1f} s warm) | scikit-learn LogisticRegression, C={sk_c:g} tuned on validation: "
        f"{sk_acc:.4f} (grid fitted in {sk_s:.1f} s) | difference {100 * (row['bertcls_test_accuracy'] - sk_acc):+.2f}"
        " points"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
