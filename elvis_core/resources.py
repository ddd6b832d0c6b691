"""Where the shipped resources are: demo studies, demo model, training configs, desktop entry, icons.

In a source checkout they live in ``resources/`` beside the packages; a wheel (``pip install .``, not editable)
carries the same folder as the data-only package ``elvis_resources`` (mapped onto ``resources/`` by setup.py).
:func:`resources_root` prefers the checkout's folder when the code runs from one (so a developer sees their own
files), else the installed package data.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional



def _source_tree_root() -> Optional[Path]:
    root = Path(__file__).resolve().parent.parent / "resources"
    return root if (root / "elvis-viewer.desktop").is_file() else None


def _installed_root() -> Optional[Path]:
    try:
        spec = importlib.util.find_spec("elvis_resources")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for loc in list(spec.submodule_search_locations or []):
        p = Path(loc)
        if (p / "elvis-viewer.desktop").is_file():
            return p
    return None


def resources_root() -> Optional[Path]:
    """The resources folder (source checkout first, then the installed package data), or None when neither exists."""
    return _source_tree_root() or _installed_root()


def resource_path(*parts: str) -> Path:
    """Path of a shipped resource, e.g. ``resource_path("demo_model")``. It may not exist (callers say so);
    when no resources folder is found at all, the path points into the source-tree location."""
    root = resources_root() or (Path(__file__).resolve().parent.parent / "resources")
    return root.joinpath(*parts)


def demo_studies() -> Path:
    return resource_path("demo")


def demo_model() -> Path:
    return resource_path("demo_model")


def demo_annotations() -> Path:
    return resource_path("demo", "ms_cxr.csv")
