"""Worker-thread helpers: every slow core call (scan, read, model load, image embedding, grounding) runs here.

``run_task(fn, *args, on_result=..., on_error=..., on_progress=...)`` runs ``fn(*args, **kwargs)`` on the global
``QThreadPool`` and delivers its result / error on the GUI thread via queued signals. ``fn`` may accept
``progress`` and ``cancel`` keyword arguments (``wants_progress=True``): ``progress(done, total, text)`` emits a
signal, ``cancel()`` returns True once :meth:`Task.cancel` was called.

:class:`Generation` implements "a new request supersedes the old one": each request takes a new number and a result
is delivered only when its number is still the latest.
"""

from __future__ import annotations

import threading
import traceback
from typing import Any, Callable, Optional

from PySide6 import QtCore


class _Signals(QtCore.QObject):
    result = QtCore.Signal(object)
    error = QtCore.Signal(object)  # the exception instance
    progress = QtCore.Signal(int, int, str)
    finished = QtCore.Signal()


class Task(QtCore.QRunnable):
    def __init__(self, fn: Callable[..., Any], *args, wants_progress: bool = False, **kwargs):
        super().__init__()
        self.setAutoDelete(False)  # we keep a reference until finished (see _LIVE)
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.wants_progress = wants_progress
        self.signals = _Signals()
        self._cancel = threading.Event()
        self.done = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def run(self) -> None:
        try:
            kwargs = dict(self.kwargs)
            if self.wants_progress:
                kwargs["progress"] = lambda done, total, text="": self.signals.progress.emit(int(done), int(total),
                                                                                             str(text))
                kwargs["cancel"] = self._cancel.is_set
            out = self.fn(*self.args, **kwargs)
        except BaseException as exc:  # delivered to the GUI thread, shown to the user
            exc.__elvis_traceback__ = traceback.format_exc()
            try:
                self.signals.error.emit(exc)
            except RuntimeError:  # receiver deleted (window closed)
                pass
        else:
            try:
                self.signals.result.emit(out)
            except RuntimeError:
                pass
        finally:
            self.done.set()
            try:
                self.signals.finished.emit()
            except RuntimeError:
                pass


_LIVE: set = set()


def pool() -> QtCore.QThreadPool:
    return QtCore.QThreadPool.globalInstance()


def run_task(fn: Callable[..., Any], *args, on_result: Optional[Callable[[Any], None]] = None,
             on_error: Optional[Callable[[BaseException], None]] = None,
             on_progress: Optional[Callable[[int, int, str], None]] = None,
             on_finished: Optional[Callable[[], None]] = None, wants_progress: bool = False, **kwargs) -> Task:
    """Run ``fn`` on the thread pool; callbacks run on the GUI thread (queued connections)."""
    task = Task(fn, *args, wants_progress=wants_progress, **kwargs)
    q = QtCore.Qt.ConnectionType.QueuedConnection
    if on_result is not None:
        task.signals.result.connect(on_result, q)
    if on_error is not None:
        task.signals.error.connect(on_error, q)
    if on_progress is not None:
        task.signals.progress.connect(on_progress, q)
    if on_finished is not None:
        task.signals.finished.connect(on_finished, q)
    _LIVE.add(task)
    task.signals.finished.connect(lambda: _LIVE.discard(task), q)
    pool().start(task)
    return task


def while_alive(owner: QtCore.QObject, callback: Optional[Callable[..., None]]) -> Optional[Callable[..., None]]:
    """``callback``, called only while ``owner``'s C++ object still exists (None stays None)."""
    if callback is None:
        return None
    import shiboken6

    def call(*args):
        if shiboken6.isValid(owner):
            callback(*args)
    return call


def pending() -> int:
    """How many tasks started by :func:`run_task` have not delivered their results yet (all owners)."""
    return len(_LIVE)


def wait_all(timeout_ms: int = 30000) -> bool:
    """Block until every pooled task finished (used on close and in tests)."""
    return pool().waitForDone(timeout_ms)


class Generation:
    """Monotonic request counter: ``n = gen.next()`` at request time, ``gen.is_current(n)`` at delivery time."""

    def __init__(self):
        self._n = 0
        self._mutex = threading.Lock()

    def next(self) -> int:
        with self._mutex:
            self._n += 1
            return self._n

    def is_current(self, n: int) -> bool:
        with self._mutex:
            return n == self._n

    @property
    def current(self) -> int:
        return self._n
