"""Redraw a run's learning curves from its metrics.json.

python scripts/plot_curves.py runs/default              # writes runs/default/curves.png
python scripts/plot_curves.py runs/a/metrics.json -o a.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bertcls.errors import BertclsError, cli_errors
from bertcls.plots import plot_curves


@cli_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Plot training loss and validation metrics of a bertcls run.")
    parser.add_argument("run", help="a run folder (output.dir of bertcls.train) or its metrics.json")
    parser.add_argument("-o", "--output", help="PNG to write (default: curves.png next to metrics.json)")
    args = parser.parse_args(argv)
    path = Path(args.run)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise BertclsError(f"{path} does not exist; give a run folder or its metrics.json")
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BertclsError(f"{path} is not valid JSON ({type(e).__name__})") from e
    if not isinstance(metrics, dict) or not (metrics.get("train_loss_curve") or metrics.get("history")):
        raise BertclsError(f"{path} has no train_loss_curve or history: not a bertcls.train metrics.json")
    out = plot_curves(metrics, args.output or path.with_name("curves.png"), title=f"learning curves: {path.parent}")
    print(out)


if __name__ == "__main__":
    sys.exit(main())
