"""Two settings of the C libraries under torch that decide how fast a training thread runs.

A job trains in a thread of the app's process, the CLI in its process's main thread; on Linux
both of these made the thread slower than the main thread until they were set. Measured with
``bench/bench_training.py`` (background runner against the foreground), 2-core CPU.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys


def one_malloc_arena() -> bool:
    """Ask glibc to serve every thread from its main heap (``M_ARENA_MAX`` = 1), unless the
    user set ``MALLOC_ARENA_MAX``.

    glibc gives a thread of its own a separate arena made of 64 MB heaps, and a training step
    frees and reallocates tens of MB of activations: in such an arena those come back as fresh
    pages. ResNet-18 at 224 px trained in a job's thread at 0.78 of the foreground with 40%
    more page faults and three times the system time; sharing the main heap brought it to
    0.97. Arenas that threads already hold (and those of threads that have ended) stay in use,
    so this runs when ftlab is first imported, before torch and before any thread of ours.
    Returns whether glibc took the setting."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL("libc.so.6").mallopt(-8, 1) == 1  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        return False


def release_idle_openmp_threads() -> bool:
    """Give back the calling thread's idle OpenMP worker threads (GNU libgomp only).

    libgomp keeps a pool of workers for every thread that has run a parallel region, and
    when it manages more threads than there are cores it stops spin-waiting between regions
    in every pool. A thread that trained in the foreground (a CLI run, the benchmark) leaves
    such a pool behind, and a job started next then sleeps and wakes its workers around every
    small op: training in the job's thread ran at 0.75 of the foreground on 2 cores (a
    parallel op on 0.5 MB took 105 us instead of 38). ``omp_pause_resource_all`` frees the
    caller's pool; the next parallel region in that thread builds a new one. Returns whether
    a pool could be released."""
    lib = libgomp()
    return lib is not None and lib.omp_pause_resource_all(1) == 0  # 1: omp_pause_soft


@functools.cache
def libgomp() -> ctypes.CDLL | None:
    """The libgomp that torch loaded, or None (another OpenMP runtime, another OS, none)."""
    import torch

    try:
        with open("/proc/self/maps") as maps:  # scikit-learn brings its own copy: take torch's
            paths = {line.split()[-1] for line in maps if "/libgomp" in line}
        ours = [path for path in paths if path.startswith(os.path.dirname(torch.__file__))] or list(paths)
        if len(ours) != 1 or "OpenMP" not in torch.__config__.parallel_info():
            return None
        lib = ctypes.CDLL(ours[0])
        lib.omp_pause_resource_all.argtypes, lib.omp_pause_resource_all.restype = [ctypes.c_int], ctypes.c_int
        return lib
    except (OSError, AttributeError):
        return None
