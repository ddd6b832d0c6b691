"""A review decision carries the key of the item the annotator saw; the core refuses one whose key differs from the
current item (a key pressed while the screen still showed the previous item must never land on the next one)."""

import pytest

from elvis_core.errors import ElvisError
from tests.core.test_review import _session, sample  # noqa: F401 (fixture)


def test_a_decision_for_another_item_is_refused_and_nothing_is_saved(tmp_path, sample):  # noqa: F811
    s, _ = _session(tmp_path, sample)
    seen = s.item.key  # on screen
    s.next()  # the queue moved on (J) before the screen caught up
    now = s.item
    before = now.boxes_state()
    for decide in (lambda: s.accept(expected_key=seen), lambda: s.reject("wrong location", expected_key=seen),
                   lambda: s.add_box(expected_key=seen), lambda: s.edit_box(now.boxes[0].box_id, (1, 1, 5, 5),
                                                                           expected_key=seen),
                   lambda: s.delete_box(now.boxes[0].box_id, expected_key=seen)):
        with pytest.raises(ElvisError, match="decision refused.*current item"):
            decide()
    assert now.boxes_state() == before and not s.can_undo
    assert s.item is now  # the queue did not move either
    s.accept(expected_key=now.key)  # the item on screen: saved
    assert s.can_undo and now.status != "unreviewed"
    s.close()
