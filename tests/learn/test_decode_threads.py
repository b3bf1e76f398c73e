"""Parallel decoding: any number of threads gives the same rows, in order, and the same problems."""
from __future__ import annotations

import os

import numpy as np

from napari_cellclass.learn.data.cache import ImageStore, decode_threads


def test_the_default_is_one_thread_per_usable_core_up_to_16():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert decode_threads() == max(1, min(16, cores))
    assert ImageStore([], 16).threads == decode_threads()


def test_rows_do_not_depend_on_the_thread_count(shared_sample, tmp_path):
    paths = [shared_sample.path(i) for i in shared_sample.image_ids[:40]]
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff")
    paths.insert(7, broken)
    built = []
    for threads in (1, 3, 8):
        store = ImageStore(paths, 24, threads=threads)
        list(store.build())
        built.append((store.array.copy(), store.ok.copy(), dict(store.problems)))
        store.close()
    for array, ok, problems in built[1:]:
        assert np.array_equal(ok, built[0][1]) and problems == built[0][2]
        assert np.array_equal(array[ok], built[0][0][ok])
    assert not built[0][1][7] and str(broken) in built[0][2]
