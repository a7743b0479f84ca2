"""Timing and peak-memory measurement shared by the benchmarks.

CPU peak memory: the largest increase of the process RSS during one call, sampled every 2 ms; glibc is
told (by re-executing the script once with MALLOC_MMAP_THRESHOLD_ set) to return large blocks at
once, so the RSS follows live tensors. CUDA: torch.cuda.max_memory_allocated above the start.
"""

from __future__ import annotations

import os
import sys
import threading
import time

if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import torch  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn, device: str = "cpu"):
    """Run fn once; return (seconds, peak extra bytes, output)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0, torch.cuda.max_memory_allocated() - base, out
    base, peak, stop = rss_bytes(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    stop.set()
    sampler.join()
    return dt, max(peak[0], rss_bytes()) - base, out
