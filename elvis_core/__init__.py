"""ELVIS core: reading, reports, studies, phantom, model, training, grounding, evaluation.

This package never imports Qt (enforced by tests/core/test_no_qt.py).
"""

__version__ = "0.1.0"
