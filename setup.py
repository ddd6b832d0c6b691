"""Packaging beyond pyproject.toml (which holds the metadata): which packages and data files go into the wheel.

``resources/`` (demo studies, demo model, training configs, desktop entry, icons) stays where it is in the source
tree and is shipped as the data-only package ``elvis_resources`` (``package_dir`` maps the name onto the folder), so
that a plain, non-editable ``pip install .`` carries the demo. Code finds it through
:func:`elvis_core.resources.resource_path`, which prefers the source tree when run from a checkout.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["elvis_core", "elvis_core.*", "elvis_viewer", "elvis_viewer.*"])
    + ["elvis_resources"],
    package_dir={"elvis_resources": "resources"},
    package_data={
        "elvis_viewer": ["*.qss"],
        "elvis_resources": ["demo/**/*", "demo_model/*", "demo_model/onnx/*", "configs/*", "icons/*", "*.desktop"],
    },
    # review stores beside the demo CSV (elvis-viewer --demo --review in a checkout) are user data, not the demo
    exclude_package_data={"elvis_resources": ["make_demo.py", "demo/*.review.sqlite*"]},
)
