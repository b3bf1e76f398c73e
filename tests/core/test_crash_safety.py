"""A process killed (SIGKILL) in the middle of a labelling loop leaves only valid sidecars."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from napari_cellclass.core.project import Project
from napari_cellclass.core.sidecars import LABEL_DIR, read_sidecar

LOOP = textwrap.dedent("""
    import sys, itertools
    from napari_cellclass.core.project import Project
    p = Project.open(sys.argv[1])
    names = p.class_names
    print("ready", flush=True)
    for k in itertools.count():
        iid = p.image_ids[k % len(p.image_ids)]
        if k % 7 == 6:
            p.clear(iid)
        else:
            p.assign(iid, names[k % len(names)])
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("delay", [0.3, 0.77])
def test_sigkill_mid_loop_leaves_valid_sidecars(tmp_path, delay):
    for i in range(40):
        Image.fromarray(np.full((4, 4), i, np.uint8)).save(tmp_path / f"im{i:02d}.png")
    p = Project.open(tmp_path)
    p.add_class("a")
    p.add_class("b")
    proc = subprocess.Popen([sys.executable, "-c", LOOP, str(tmp_path)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    sidecars = [f for f in (tmp_path / LABEL_DIR).glob("*.npz") if not f.name.startswith(".")]
    leftovers = [f for f in (tmp_path / LABEL_DIR).iterdir() if f not in sidecars]
    assert all(f.name.startswith(".cellclass-tmp-") for f in leftovers)  # at most an unfinished temp file
    assert sidecars, "the loop wrote nothing before it was killed"
    for sc in sidecars:  # every file that carries the sidecar name is complete and valid
        assert read_sidecar(sc)["classes"] in (("a",), ("b",))
    q = Project.open(tmp_path)
    assert not [x for x in q.problems if "corrupt" in x]
    assert sum(q.counts().values()) == len(sidecars)
