"""A virtual environment that sees the packages of the environment running the tests (issue 25).

``venv.EnvBuilder(system_site_packages=True)`` links a new venv to the *base* interpreter's site-packages, not to the
environment that runs pytest: run from a venv (or a conda-like env whose packages the base interpreter does not
see), the inner venv could not import PySide6 or torch. Instead the inner venv gets no system site and a ``.pth``
file listing every site-packages folder on the running interpreter's ``sys.path``, in the same order. Lines of a
``.pth`` file are appended after the venv's own site-packages, so what is installed into the new venv wins; the
``.pth`` files inside the listed folders are not run (an editable install of this project in the running
environment cannot shadow the copy installed into the new venv). Standard library only: the venv tests import it
from other interpreters.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

PTH_NAME = "_running_env_site.pth"


def running_site_dirs() -> list[str]:
    """The site-packages / dist-packages folders on this interpreter's ``sys.path``, in order, without repeats."""
    out: list[str] = []
    for p in sys.path:
        if not p or not os.path.isdir(p):
            continue
        name = os.path.basename(os.path.normpath(p))
        if name in ("site-packages", "dist-packages") and os.path.realpath(p) not in map(os.path.realpath, out):
            out.append(os.path.abspath(p))
    return out


def purelib(python: Path) -> Path:
    r = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       capture_output=True, text=True, check=True, env={k: v for k, v in os.environ.items()
                                                                        if not k.startswith("PYTHON")})
    return Path(r.stdout.strip())


def make_venv_seeing_running_env(env_dir: Path, with_pip: bool = True) -> Path:
    """Create a venv at ``env_dir`` whose interpreter also imports this environment's packages; return its python."""
    venv.EnvBuilder(system_site_packages=False, with_pip=with_pip, symlinks=True).create(env_dir)
    py = Path(env_dir) / "bin" / "python"
    site = purelib(py)
    site.mkdir(parents=True, exist_ok=True)
    (site / PTH_NAME).write_text("".join(d + "\n" for d in running_site_dirs()))
    return py


if __name__ == "__main__":  # python envs.py DIR: used by the test that runs this from another venv
    print(make_venv_seeing_running_env(Path(sys.argv[1]), with_pip=False))
