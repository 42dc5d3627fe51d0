"""Freed memory goes back to the system: glibc's allocator as the service tunes it, and the idle heap trim."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from service.memory import IdleTrimmer, _glibc

from .conftest import checkout_env

# One process per mode (allocator settings are process-wide). It frees a 16 MiB buffer, which raises glibc's
# default mmap threshold to 16 MiB, then allocates 300 MiB in 1 MiB buffers from a worker thread with small
# long-lived blocks between them (a decode or batch thread's pattern), frees the large ones and reports RSS
# in MiB: at the start, at the peak, after the free, and after a heap trim.
ALLOCATIONS = """
import sys, threading
import numpy as np
from service.memory import trim_heap, tune_allocator

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

if sys.argv[1] == "tuned":
    tune_allocator()
freed = np.ones(4 << 20, np.float32)
del freed
start = rss()
pinned, large = [], []

def work():
    for _ in range(300):
        large.append(np.ones(1 << 18, np.float32))
        pinned.append(bytearray(4096))

thread = threading.Thread(target=work)
thread.start()
thread.join()
peak = rss()
large.clear()
after = rss()
trim_heap()
print(start, peak, after, rss())
"""


def rss_after_allocations(mode: str) -> tuple[float, float, float, float]:
    out = subprocess.run(
        [sys.executable, "-c", ALLOCATIONS, mode], capture_output=True, text=True, check=True, env=checkout_env()
    )
    start, peak, after, trimmed = map(float, out.stdout.split())
    return start, peak, after, trimmed


@pytest.mark.skipif(sys.platform != "linux" or _glibc() is None, reason="needs glibc's allocator (Linux)")
def test_the_tuned_allocator_returns_large_buffers_at_once_and_a_trim_returns_the_rest() -> None:
    start, peak, after, trimmed = rss_after_allocations("default")
    assert peak - start > 250
    assert after - start > 250  # glibc's default keeps the freed buffers: the process holds its peak
    assert trimmed - start < 30  # until the heap is trimmed
    start, peak, after, _ = rss_after_allocations("tuned")
    assert peak - start > 250 and after - start < 30  # tuned: unmapped when freed


def test_the_idle_trim_runs_once_after_each_burst_and_never_during_one() -> None:
    async def scenario() -> list[str]:
        events: list[str] = []
        state = {"activity": 0, "busy": False}

        def trim() -> bool:
            events.append(f"trim after {state['activity']}")
            return True

        trimmer = IdleTrimmer(lambda: state["activity"], lambda: state["busy"], idle_s=0.05, trim=trim)
        trimmer.start()
        await asyncio.sleep(0.2)  # quiet from the start: nothing to give back
        for _ in range(6):  # a burst: activity every interval
            state["activity"] += 1
            await asyncio.sleep(0.04)
        events.append("burst over")
        await asyncio.sleep(0.3)  # quiet: one trim, not one per interval
        state["busy"] = True  # a long batch: activity stands still but memory is in use
        state["activity"] += 1
        await asyncio.sleep(0.3)
        events.append("batch over")
        state["busy"] = False
        await asyncio.sleep(0.3)
        trimmer.stop()
        return events

    assert asyncio.run(scenario()) == ["burst over", "trim after 6", "batch over", "trim after 7"]


def test_tuning_is_a_no_op_that_says_so_where_there_is_no_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.memory as memory

    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert memory.tune_allocator() is False and memory.trim_heap() is False


def test_onnx_runs_larger_than_warm_up_give_their_arena_memory_back_and_the_rest_keep_it() -> None:
    import torch

    from pose.runtimes.onnxruntime_backend import ArenaBound

    arena = ArenaBound()
    warm_up = torch.zeros(16, 3, 256, 384)
    assert arena.run_options(warm_up) is None and arena.run_options(torch.zeros(1, 3, 256, 256)) is None
    arena.settle_arena()
    assert arena.run_options(warm_up) is None  # the service's usual batches keep the arena's speed
    wide = arena.run_options(torch.zeros(16, 3, 256, 2048))
    assert wide is not None and wide.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
