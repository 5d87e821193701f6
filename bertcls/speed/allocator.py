"""Run training under jemalloc when the machine has it: flat, lower memory on CPU, and no page faults per batch.

With glibc's malloc a CPU training process keeps growing: batches of different lengths leave the heap fragmented, so
resident memory climbs for the whole run; under jemalloc it stays flat and lower, at the same speed (docs/benchmarks.md,
"Levers"). This is the allocator swap that PyTorch's own CPU launcher (``python -m torch.backends.xeon.run_cpu``) and
Intel's tuning guide recommend.

An allocator can only be chosen when a process starts (``LD_PRELOAD``), so ``python -m bertcls.train`` re-runs itself
once with jemalloc preloaded, before it has done any work, when a jemalloc library is found (Debian/Ubuntu:
``apt install libjemalloc2``; conda: ``conda install jemalloc``) and the process does not have it already.
``BERTCLS_ALLOCATOR=system`` (or ``train.speedups=false``) keeps the system allocator;
``BERTCLS_ALLOCATOR=/path/to/libjemalloc.so`` names the library. Linux only; elsewhere nothing changes.

The re-run also sets ``MALLOC_CONF`` (unless it is set). jemalloc 5.3 hands freed blocks above 8 MB
(``oversize_threshold``) straight back to the kernel, and a batch's large activations are such blocks, freed and
allocated again every step: each came back as fresh pages that the kernel had to fault in and zero. Never purging
(``dirty_decay_ms:-1``) keeps them for reuse; the cost is that resident memory stays at the run's high-water mark
instead of dipping between batches (docs/benchmarks.md, "Levers").

The other half of CPU memory is oneDNN's primitive cache (see ``cap_primitive_cache``).
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import re
import sys
from pathlib import Path

ENV = "BERTCLS_ALLOCATOR"
# oneDNN's own primitive cache, and the cache in front of it in PyTorch's oneDNN glue (ideep), which holds primitives
# too: both have to be small for the memory to go.
PRIMITIVE_CACHE_ENVS = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
# 128 holds the primitives of a bf16 training step and an evaluation batch with room to spare (docs/benchmarks.md,
# "Levers").
PRIMITIVE_CACHE_CAPACITY = 128
# Keep freed pages for reuse instead of returning them to the kernel (module docstring). Both options exist from
# jemalloc 5.2 on; an older jemalloc would print a complaint about each one, so it gets none.
MALLOC_CONF = "oversize_threshold:0,dirty_decay_ms:-1"
MALLOC_CONF_SINCE = (5, 2)
_MARK = "_BERTCLS_ALLOCATOR_TRIED"  # set before the re-run, so a library that fails to load cannot cause a loop


def loaded() -> str | None:
    """'jemalloc' when this process runs under jemalloc (preloaded or linked), else None."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    return "jemalloc" if "jemalloc" in maps else None


def name() -> str:
    """The allocator this process runs under, as the run log and the benchmark name it."""
    return loaded() or "system malloc"


def find_jemalloc() -> str | None:
    """A jemalloc shared library to preload: ``BERTCLS_ALLOCATOR`` if it is a path, else one on the loader's path or
    in this Python's (conda or venv) prefix."""
    choice = os.environ.get(ENV, "auto")
    if choice == "system":
        return None
    if choice != "auto":
        return choice
    prefixes = {sys.prefix, sys.base_prefix, os.environ.get("CONDA_PREFIX", sys.prefix)}
    for prefix in prefixes:
        found = sorted(glob.glob(os.path.join(prefix, "lib", "libjemalloc.so*")))
        if found:
            return found[0]
    soname = ctypes.util.find_library("jemalloc")  # e.g. libjemalloc.so.2 from ldconfig's cache
    if soname:
        for directory in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"):
            if os.path.exists(os.path.join(directory, soname)):
                return os.path.join(directory, soname)
        return soname
    return None


def jemalloc_version(library: str) -> tuple[int, ...] | None:
    """The version a jemalloc library was built as, read from the version string it carries (``5.3.0-0-g54eaed1...``);
    None when the file cannot be read or carries none."""
    try:
        data = Path(library).read_bytes()
    except OSError:
        return None
    found = re.search(rb"(?<![\d.])(\d+)\.(\d+)\.(\d+)-\d+-g[0-9a-f]{7,40}", data)
    return tuple(int(x) for x in found.groups()) if found else None


def preload_env(env: dict[str, str] | None = None) -> dict[str, str] | None:
    """``env`` (default: this process's) with jemalloc added to ``LD_PRELOAD`` and, for jemalloc 5.2 or later,
    ``MALLOC_CONF`` set if unset; or None when there is nothing to do: not Linux, switched off, no library found, or
    already preloaded."""
    env = dict(os.environ if env is None else env)
    if not sys.platform.startswith("linux") or env.get(_MARK):
        return None
    library = find_jemalloc()
    if library is None or "jemalloc" in env.get("LD_PRELOAD", ""):
        return None
    if not os.path.isabs(library) or os.path.exists(library):
        env["LD_PRELOAD"] = " ".join(x for x in (library, env.get("LD_PRELOAD", "")) if x)
        # the user's own MALLOC_CONF wins, and then the library need not be read
        if "MALLOC_CONF" not in env and (jemalloc_version(library) or (0,)) >= MALLOC_CONF_SINCE:
            env["MALLOC_CONF"] = MALLOC_CONF
        env[_MARK] = "1"
        return env
    raise SystemExit(f"error: {ENV}={library}: no such file; give the path of libjemalloc.so, or 'system'")


def rerun_under_jemalloc() -> None:
    """Replace this process by the same command under jemalloc (see the module docstring); returns if not needed."""
    if loaded():
        return
    env = preload_env()
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def cap_primitive_cache(capacity: int = PRIMITIVE_CACHE_CAPACITY) -> None:
    """Keep the caches of oneDNN primitives small, unless the user has sized them (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``,
    ``LRU_CACHE_CAPACITY``).

    bf16 matmuls on CPU run as oneDNN primitives, one per shape. Length-grouped batches come in dozens of sequence
    lengths, so with the default capacities (1024 each) resident memory grows with every new length until the caches
    are full, and peak memory grows with the amount of training data (docs/benchmarks.md, "Levers"). Both are read when
    the first primitive is made, so this works when called before the first bf16 matmul of the process and changes
    nothing afterwards.
    """
    for env in PRIMITIVE_CACHE_ENVS:
        os.environ.setdefault(env, str(capacity))
