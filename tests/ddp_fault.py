"""``python -m tests.ddp_fault MODE ARGS...``: ``bertcls.train`` where rank 1 dies (MODE=die) or hangs (MODE=hang)
at its first step's end, for the tests that check the other process then fails in bounded time with a clear error."""

import os
import sys
import time

import bertcls.run as recipe
from bertcls.train import main

mode, args = sys.argv[1], sys.argv[2:]
if os.environ.get("RANK") == "1":
    real = recipe.stop_requested

    def faulty(*args, **kwargs):
        if mode == "die":
            os._exit(7)
        time.sleep(3600)
        return real(*args, **kwargs)

    recipe.stop_requested = faulty
sys.exit(main(args))
