"""Read-only conveniences of the main window over its :class:`~elvis_viewer.session.ViewerSession` (tests and
app.py use them): ``win.rad`` is ``win.session.rad``, and so on. A mixin of :class:`~elvis_viewer.main_window.
MainWindow`."""

from __future__ import annotations

from typing import Optional


class SessionShortcuts:
    @property
    def rad(self):
        return self.session.rad

    @property
    def rad_path(self):
        return self.session.rad_path

    @property
    def report(self):
        return self.session.report

    @property
    def phrase(self) -> Optional[str]:
        return self.session.phrase.text or None

    @property
    def slots(self):
        return self.session.slots

    @property
    def problems(self):
        return self.session.problems

    @property
    def annotations(self):
        return self.session.annotations

    @property
    def last_latency_s(self):
        return self.session.last_latency_s
