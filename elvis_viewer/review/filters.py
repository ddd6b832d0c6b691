"""The Review tab's queue filters (category, split, status combo boxes with counts): a mixin of
:class:`~elvis_viewer.review.view.ReviewView`."""

from __future__ import annotations

from typing import Optional

from elvis_core.review import ITEM_STATUSES


class FiltersMixin:
    def _fill_filters(self, counts=None) -> None:
        s = self.session
        counts = counts or s.counts()
        for combo, key, label in ((self.category_combo, "category", "All categories"),
                                  (self.split_combo, "split", "All splits")):
            combo.blockSignals(True)
            cur = combo.currentData()
            combo.clear()
            combo.addItem(f"{label} ({len(s.items)})", None)
            for v in sorted(counts[key]):
                combo.addItem(f"{v or '(none)'} ({counts[key][v]})", v)
            i = combo.findData(cur)
            combo.setCurrentIndex(max(i, 0))
            combo.blockSignals(False)
        self.status_combo.blockSignals(True)
        cur = self.status_combo.currentData()
        self.status_combo.clear()
        self.status_combo.addItem(f"Any status ({len(s.items)})", None)
        self.status_combo.addItem(f"reviewed ({counts['total']['reviewed']})", "reviewed")
        for st in ITEM_STATUSES:
            self.status_combo.addItem(f"{st} ({counts['status'].get(st, 0)})", st)
        i = self.status_combo.findData(cur)
        self.status_combo.setCurrentIndex(max(i, 0))
        self.status_combo.blockSignals(False)

    def set_filters(self, category: Optional[str] = None, split: Optional[str] = None,
                    status: Optional[str] = None) -> None:
        for combo, v in ((self.category_combo, category), (self.split_combo, split), (self.status_combo, status)):
            combo.blockSignals(True)
            combo.setCurrentIndex(max(combo.findData(v), 0))
            combo.blockSignals(False)
        self._on_filter()

    def _on_filter(self, *_):
        if self.session is None:
            return
        self.session.set_filter(self.category_combo.currentData(), self.split_combo.currentData(),
                                self.status_combo.currentData())
        self._show_current()
