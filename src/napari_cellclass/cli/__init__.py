"""The ``napari-cellclass`` command line: one subcommand per job, ``--json`` on each.

Exit codes: 0 success, 2 bad input (one human line on stderr, no traceback) or a result that
could not be saved (a handler's result with ``"ok": false``), 130 interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..core.errors import CellclassError
from . import labelling_cmds, learn_cmds, project_cmds, screen_cmds, share_cmds, trust_cmds

Handler = Callable[[argparse.Namespace], dict[str, Any]]
PROG = "napari-cellclass"


class Parser(argparse.ArgumentParser):
    """An argument parser that can add flags on first use (parsing or help).

    A subcommand generates flags from a module that loads torch (the training settings) with
    :meth:`defer`, so the other subcommands still start without loading it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deferred: list[Callable[[argparse.ArgumentParser], None]] = []

    def defer(self, add: Callable[[argparse.ArgumentParser], None]) -> None:
        """Call ``add(self)`` before this parser parses or shows its help."""
        self._deferred.append(add)

    def _add_deferred(self) -> None:
        while self._deferred:
            self._deferred.pop(0)(self)

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        """Add the deferred flags, then parse."""
        self._add_deferred()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        """Add the deferred flags, then format the help."""
        self._add_deferred()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = Parser(
        prog=PROG,
        description="Sort microscopy images into classes with deep learning (napari-cellclass).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for mod in (project_cmds, learn_cmds, labelling_cmds, trust_cmds, screen_cmds, share_cmds):
        mod.register(sub)
    return parser


def add_common(p: argparse.ArgumentParser) -> None:
    """Flags every subcommand has."""
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (for scripts)")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def add_device(p: argparse.ArgumentParser) -> None:
    """The ``--device`` flag of the commands that run a model."""
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")


def _version() -> str:
    from .. import __version__

    return __version__


def emit(args: argparse.Namespace, result: dict[str, Any], human: Callable[[dict[str, Any]], str]) -> None:
    """Print the result as JSON (``--json``) or as text for people."""
    if getattr(args, "json", False):
        print(json.dumps(result, ensure_ascii=False, default=str))
    else:
        text = human(result)
        if text:
            print(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except KeyboardInterrupt:  # Ctrl+C while the training options import torch
        _fail(argparse.Namespace(), "interrupted")
        return 130
    try:
        result = args.handler(args)
        return 2 if isinstance(result, dict) and result.get("ok") is False else 0
    except CellclassError as exc:
        _fail(args, str(exc), getattr(exc, "details", None))
        return 2
    except KeyboardInterrupt:
        _fail(args, "interrupted")
        return 130
    except BrokenPipeError:  # the reader of the output went away (``| head``): stop quietly, like other tools
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        if getattr(args, "debug", False):
            raise
        _fail(args, f"{type(exc).__name__}: {exc} (rerun with --debug for details)")
        return 2


def _fail(args: argparse.Namespace, message: str, details: dict[str, Any] | None = None) -> None:
    """One error line on stderr; with ``--json`` also ``{"ok": false, "error": ..., **details}`` on stdout."""
    line = " ".join(message.split())
    print(f"{PROG}: error: {line}", file=sys.stderr)
    if getattr(args, "json", False):
        extra = details if isinstance(details, dict) else {}
        print(json.dumps({**extra, "ok": False, "error": line}, ensure_ascii=False, default=str))


def stderr_progress(label: str) -> Callable[[int, int], None]:
    """A compact progress bar on stderr (only when stderr is a terminal or CELLCLASS_PROGRESS=1)."""
    show = sys.stderr.isatty() or os.environ.get("CELLCLASS_PROGRESS") == "1"

    def update(done: int, total: int) -> None:
        if not show or total <= 0:
            return
        width = 30
        filled = int(width * done / total)
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{end}")
        sys.stderr.flush()

    return update
