"""Native decoders write to file descriptor 2 themselves: pylibjpeg-rle's Rust code prints its panic message (and,
with ``RUST_BACKTRACE=1``, a backtrace of 100+ lines) before pyo3 raises ``PanicException``; no Python-level
redirect sees it. :func:`quiet_fd2` points fd 2 at ``/dev/null`` for the duration of a decode, so the user sees
only our one-line error. Reentrant and thread-safe: the first entry redirects, the last exit restores."""

from __future__ import annotations

import contextlib
import os
import sys
import threading

_LOCK = threading.Lock()
_DEPTH = 0
_SAVED = -1


@contextlib.contextmanager
def quiet_fd2():
    global _DEPTH, _SAVED
    with _LOCK:
        if _DEPTH == 0:
            try:
                sys.stderr.flush()
            except (OSError, ValueError, AttributeError):
                pass
            try:
                _SAVED = os.dup(2)
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 2)
                os.close(null)
            except OSError:  # no fd 2 at all (a daemon): nothing to quieten
                _SAVED = -1
        _DEPTH += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH -= 1
            if _DEPTH == 0 and _SAVED >= 0:
                os.dup2(_SAVED, 2)
                os.close(_SAVED)
                _SAVED = -1
