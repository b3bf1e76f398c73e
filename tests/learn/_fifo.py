"""A FIFO that gets a writer only after a while: a read that waits on it makes the test fail, not hang."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def fifo_with_late_writer(path: Path, text: str, after_s: float = 10.0) -> Path:
    """Make a FIFO at ``path``; after ``after_s`` seconds write ``text`` into it (unblocking a waiting read)."""
    os.mkfifo(path)

    def unblock() -> None:
        time.sleep(after_s)
        with open(path, "w") as fh:
            fh.write(text)

    threading.Thread(target=unblock, daemon=True).start()
    return path
