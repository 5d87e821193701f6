"""Peak anonymous memory of a training run, before and during training: ``python scripts/memtrace.py KEY=VALUE ...``.

Runs ``python -m bertcls.train`` in this process with the given overrides while a thread reads ``RssAnon`` from
``/proc/self/status`` every 50 ms, then prints the peak before the first step and the peak while training (Linux
only). Peak RSS (``/usr/bin/time -v``) also counts file-backed pages of memory-mapped files; this separates out what
the process itself allocated. docs/scale.md uses it to compare a 10k-row and a 1M-row run.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from pathlib import Path


def sample(samples: list[tuple[int, bool]], main: threading.Thread) -> None:
    while True:
        status = Path("/proc/self/status").read_text()
        anon = next(int(line.split()[1]) // 1024 for line in status.splitlines() if line.startswith("RssAnon"))
        frame = sys._current_frames().get(main.ident)
        training = frame is not None and any(f.name == "fit" for f in traceback.extract_stack(frame))
        samples.append((anon, training))
        time.sleep(0.05)


def main() -> None:
    samples: list[tuple[int, bool]] = []
    threading.Thread(target=sample, args=(samples, threading.main_thread()), daemon=True).start()
    from bertcls.train import main as train

    try:
        train(sys.argv[1:])
    finally:
        before = [a for a, training in samples if not training]
        during = [a for a, training in samples if training]
        print(f"peak anonymous memory: {max(before, default=0)} MB outside training, {max(during, default=0)} MB in it")


if __name__ == "__main__":
    main()
