"""Parallel decoding: any number of threads or forked processes gives the same rows, in order, and the same
problems; a process that dies, a cancel, a wrong channel count and the disk cache behave as with threads."""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

from napari_cellclass.core.errors import ChannelMismatchError
from napari_cellclass.learn.data import cache
from napari_cellclass.learn.data.cache import ImageStore, decode_threads

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="decoding processes are forked on Linux")


@pytest.fixture
def forking(monkeypatch):
    """Decode in forked processes although this test process has Qt loaded (pytest-qt)."""
    monkeypatch.setattr(cache, "can_fork_decoders", lambda: True)
    forks = []
    real = cache._fork_pool
    monkeypatch.setattr(cache, "_fork_pool", lambda store: forks.append(store.threads) or real(store))
    return forks


def _paths(sample, tmp_path, n=40):
    paths = [sample.path(i) for i in sample.image_ids[:n]]
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff")
    paths.insert(7, broken)
    return paths


def test_the_default_is_one_worker_per_usable_core_up_to_16_shared_under_torchrun(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert decode_threads() == max(1, min(16, cores))
    assert ImageStore([], 16).threads == decode_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert decode_threads() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert decode_threads() == 1


@linux_only
def test_rows_do_not_depend_on_the_thread_or_process_count(shared_sample, tmp_path, forking):
    paths = _paths(shared_sample, tmp_path)
    built = []
    for threads, processes in ((1, False), (3, False), (8, False), (2, None), (3, None)):
        store = ImageStore(paths, 24, threads=threads, processes=processes)
        list(store.build())
        built.append((store.array.copy(), store.ok.copy(), dict(store.problems)))
        store.close()
    for array, ok, problems in built[1:]:
        assert np.array_equal(ok, built[0][1]) and problems == built[0][2]
        assert np.array_equal(array[ok], built[0][0][ok])
    assert not built[0][1][7] and str(paths[7]) in built[0][2]
    assert forking == [2, 3]  # the last two built in processes


def test_qt_in_the_process_means_threads(monkeypatch):
    monkeypatch.setitem(sys.modules, "PyQt5", sys.modules.get("PyQt5") or object())
    assert not cache.can_fork_decoders()


@linux_only
def test_processes_fill_the_disk_cache_and_reuse_it(shared_sample, tmp_path, forking):
    paths = _paths(shared_sample, tmp_path)
    ref = ImageStore(paths, 24, processes=False)
    list(ref.build())
    store = ImageStore(paths, 24, threads=2, cache_dir=tmp_path / "cache", memory_mb=0)
    list(store.build())
    assert store.location == "disk" and forking == [2]
    assert np.array_equal(store.ok, ref.ok)
    assert np.array_equal(store.gather(np.flatnonzero(store.ok)), ref.array[ref.ok])
    store.close()
    again = ImageStore(paths, 24, threads=2, cache_dir=tmp_path / "cache", memory_mb=0)
    list(again.build())
    assert again.reused == int(ref.ok.sum()) and forking == [2]  # only the broken file was tried again: threads
    assert np.array_equal(again.gather(np.flatnonzero(again.ok)), ref.array[ref.ok])
    again.close()


@linux_only
def test_a_wrong_channel_count_in_a_process_is_the_same_one_line_error(shared_sample, tmp_path, forking):
    import tifffile

    paths = _paths(shared_sample, tmp_path)[:30]
    odd = tmp_path / "three.tif"
    tifffile.imwrite(odd, np.zeros((3, 20, 20), np.uint16), photometric="minisblack",
                     metadata={"axes": "CYX"})
    paths.insert(20, odd)
    store = ImageStore(paths, 24, threads=2)
    with pytest.raises(ChannelMismatchError, match=r"three\.tif: has 3 channel\(s\) but the model takes 2") as info:
        list(store.build())
    assert "\n" not in str(info.value) and forking == [2]


@linux_only
def test_a_killed_process_hands_the_rest_to_threads(shared_sample, tmp_path, forking, monkeypatch):
    paths = _paths(shared_sample, tmp_path)
    ref = ImageStore(paths, 24, processes=False)
    list(ref.build())
    parent = os.getpid()
    real = ImageStore._decode

    def dies_in_a_child(self, i):
        if i == 20 and os.getpid() != parent:
            os._exit(9)  # as the kernel's out-of-memory killer would
        return real(self, i)

    monkeypatch.setattr(ImageStore, "_decode", dies_in_a_child)
    store = ImageStore(paths, 24, threads=2)
    list(store.build())
    assert forking == [2] and store.processes is False
    assert np.array_equal(store.ok, ref.ok) and np.array_equal(store.array[store.ok], ref.array[ref.ok])


@linux_only
def test_a_cancel_stops_the_processes(shared_sample, tmp_path, forking):
    from napari_cellclass.learn.events import CancelToken

    token = CancelToken()
    store = ImageStore(_paths(shared_sample, tmp_path), 24, threads=2)
    for done, _total in store.build(cancel=token):
        if done >= 5:
            token.cancel()
    assert store.cancelled and forking == [2] and 5 <= store.ok.sum() < len(store)


@linux_only
def test_no_process_to_be_had_means_threads(shared_sample, tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "can_fork_decoders", lambda: True)

    def fails(store):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(cache, "_fork_pool", fails)
    store = ImageStore(_paths(shared_sample, tmp_path), 24, threads=2)
    list(store.build())
    assert store.processes is False and store.ok.sum() == len(store) - 1


@linux_only
def test_ctrl_c_while_the_pool_stops_kills_the_workers(shared_sample, tmp_path, forking, monkeypatch):
    """A second Ctrl+C inside the executor's shutdown left the workers waiting for tasks and the
    command waiting for them at exit."""
    from concurrent.futures import ProcessPoolExecutor

    pools = []
    wrapped = cache._fork_pool
    monkeypatch.setattr(cache, "_fork_pool", lambda store: pools.append(wrapped(store)) or pools[-1])
    real_shutdown = ProcessPoolExecutor.shutdown
    interrupted = []

    def shutdown(self, *a, **k):
        if not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return real_shutdown(self, *a, **k)

    monkeypatch.setattr(ProcessPoolExecutor, "shutdown", shutdown)
    store = ImageStore(_paths(shared_sample, tmp_path), 24, threads=2)
    with pytest.raises(KeyboardInterrupt):
        list(store.build())
    pids = [proc.pid for proc in pools[0]._processes.values()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in pids)
    real_shutdown(pools[0], wait=True)


def _gone(pid: int) -> bool:
    """The process has ended (exited, or a zombie not reaped yet; the executor's own thread may reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
