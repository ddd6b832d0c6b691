"""A normal, non-editable install carries the demo: ``pip install .`` into a fresh venv, then ``elvis-viewer --demo
--screenshot`` from another folder (issue 14). The venv sees the packages of the environment running the tests (a
venv, a conda-like env or a system install; ``envs.py``) only to avoid reinstalling torch/PySide6; the test checks
that elvis_core / elvis_viewer / the demo really come from the venv."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from elvis_viewer.desktop_entry import desktop_entry_text, install_desktop_entry
from tests.packaging.envs import PTH_NAME, make_venv_seeing_running_env, purelib, running_site_dirs

REPO = Path(__file__).resolve().parents[2]


def _clean_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env.update(QT_QPA_PLATFORM="offscreen", HOME=str(tmp / "home"), XDG_DATA_HOME=str(tmp / "home" / "share"),
               XDG_CONFIG_HOME=str(tmp / "home" / "config"), XDG_RUNTIME_DIR=str(tmp / "run"),
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")
    (tmp / "home").mkdir(exist_ok=True)
    (tmp / "run").mkdir(mode=0o700, exist_ok=True)
    return env


@pytest.mark.slow
def test_non_editable_install_runs_the_demo(tmp_path):
    env_dir = tmp_path / "venv"
    make_venv_seeing_running_env(env_dir)
    py, pip, viewer = (env_dir / "bin" / n for n in ("python", "pip", "elvis-viewer"))
    env = _clean_env(tmp_path)
    # the wheel of the checkout, built by this interpreter's setuptools (the venv's bundled one is too old), then
    # installed by the venv's pip as `pip install .` would; --no-deps: torch, PySide6 & co. from the running env
    # built from a clean copy of what a checkout holds: a stale build/ folder in the repo could otherwise slip
    # files into the wheel that the packaging config no longer ships
    src = tmp_path / "src"
    src.mkdir()
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info", ".pytest_cache")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("elvis_core", "elvis_viewer", "resources"):
        shutil.copytree(REPO / name, src / name, ignore=junk)
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                        str(src)], capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (wheel,) = wheels.glob("elvis_viewer-*.whl")
    r = subprocess.run([str(pip), "install", "--no-deps", "--no-compile", str(wheel)],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, env=env).stdout.strip()
    assert viewer.is_file(), "pip did not install the elvis-viewer script"
    work = tmp_path / "elsewhere"  # not the checkout: nothing may be imported from the source tree
    work.mkdir()
    probe = ("import json, elvis_core, elvis_viewer, elvis_resources; from elvis_viewer import app; "
             "print(json.dumps({'core': elvis_core.__file__, 'viewer': elvis_viewer.__file__, "
             "'demo_model': str(app.DEMO_MODEL), 'demo': str(app.DEMO_STUDIES), "
             "'has_model': (app.DEMO_MODEL / 'model.safetensors').is_file(), "
             "'has_onnx': (app.DEMO_MODEL / 'onnx' / 'manifest.json').is_file(), "
             "'has_known_words': (app.DEMO_MODEL / 'known_words.json').is_file(), "
             "'n_dcm': len(list(app.DEMO_STUDIES.rglob('*.dcm')))}))")
    r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, env=env, cwd=str(work), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("core", "viewer", "demo_model", "demo"):
        assert Path(info[key]).resolve().is_relative_to(Path(site).resolve()), (key, info[key], site)
    assert info["has_model"] and info["has_onnx"] and info["has_known_words"] and info["n_dcm"] >= 5, info

    shot = work / "out.png"
    r = subprocess.run([str(viewer), "--demo", "--screenshot", str(shot), "--timeout", "90"],
                       capture_output=True, text=True, env=env, cwd=str(work), timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "not there yet" not in r.stdout + r.stderr
    assert shot.is_file() and shot.stat().st_size > 20_000

    # the installed script installs its desktop entry, pointing at itself
    r = subprocess.run([str(viewer), "--install-desktop-entry"], capture_output=True, text=True, env=env,
                       cwd=str(work), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    entry = Path(env["XDG_DATA_HOME"]) / "applications" / "elvis-viewer.desktop"
    text = entry.read_text()
    assert f"Exec={viewer.resolve()} %F" in text or f"Exec={viewer} %F" in text, text
    assert (Path(env["XDG_DATA_HOME"]) / "icons/hicolor/scalable/apps/elvis-viewer.svg").is_file()


def test_install_desktop_entry_paths_and_exec(tmp_path):
    exe = tmp_path / "my env" / "bin" / "elvis-viewer"
    written = install_desktop_entry(tmp_path / "share", executable=str(exe))
    rel = sorted(str(p.relative_to(tmp_path / "share")) for p in written)
    assert rel == ["applications/elvis-viewer.desktop", "icons/hicolor/256x256/apps/elvis-viewer.png",
                   "icons/hicolor/scalable/apps/elvis-viewer.svg"]
    text = (tmp_path / "share" / "applications" / "elvis-viewer.desktop").read_text()
    assert f'Exec="{exe}" %F' in text  # a path with a space is quoted (Desktop Entry Spec)
    assert f"TryExec={exe}\n" in text
    assert "Icon=elvis-viewer" in text and text.startswith("[Desktop Entry]")
    assert (tmp_path / "share/icons/hicolor/256x256/apps/elvis-viewer.png").read_bytes()[:4] == b"\x89PNG"


def test_desktop_entry_module_fallback():
    text = desktop_entry_text("[Desktop Entry]\nExec=elvis-viewer %F\nTryExec=elvis-viewer\n", "/usr/bin/python3 -m elvis_viewer")
    assert "Exec=/usr/bin/python3 -m elvis_viewer %F" in text and "TryExec" not in text


def test_inner_venv_sees_the_packages_of_a_venv_running_the_tests(tmp_path):
    """Run from a venv whose packages the base interpreter does not see (as after `pip install` into a venv), the
    packaging test's inner venv still imports them; the old `system_site_packages=True` venv did not (issue 25)."""
    outer = tmp_path / "outer"
    outer_py = make_venv_seeing_running_env(outer, with_pip=False)  # the running env's torch/PySide6 stay visible
    outer_site = str(purelib(outer_py))
    marker = Path(outer_site) / "h25_only_in_outer_venv"  # a package installed into the outer venv only
    marker.mkdir()
    (marker / "__init__.py").write_text("WHERE = 'outer venv'\n")
    env = _clean_env(tmp_path)
    probe = ("import json, sys, importlib.util as u; print(json.dumps({'prefix': sys.prefix, "
             "'marker': u.find_spec('h25_only_in_outer_venv') is not None, "
             "'qt': u.find_spec('PySide6') is not None, 'np': u.find_spec('numpy') is not None}))")

    # the inner venv, built BY the outer venv's interpreter with the helper the packaging test uses
    r = subprocess.run([str(outer_py), str(REPO / "tests" / "packaging" / "envs.py"), str(tmp_path / "inner")],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    inner_py = Path(r.stdout.strip().splitlines()[-1])
    pth = (purelib(inner_py) / PTH_NAME).read_text().splitlines()
    assert outer_site in pth or str(Path(outer_site).resolve()) in map(lambda p: str(Path(p).resolve()), pth), pth
    info = json.loads(subprocess.run([str(inner_py), "-c", probe], capture_output=True, text=True, env=env,
                                     cwd=str(tmp_path), check=True, timeout=60).stdout)
    assert Path(info["prefix"]).resolve() == (tmp_path / "inner").resolve(), info  # it is its own venv
    assert info == {**info, "marker": True, "qt": True, "np": True}, info

    # what the test did before: a system-site venv made from the outer venv links to the base interpreter only
    old = tmp_path / "old"
    r = subprocess.run([str(outer_py), "-c", "import sys, venv; venv.EnvBuilder(system_site_packages=True, "
                        "with_pip=False, symlinks=True).create(sys.argv[1])", str(old)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads(subprocess.run([str(old / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                                     env=env, check=True, timeout=60).stdout)
    assert info["marker"] is False, "the base interpreter should not see a package of the outer venv"


def test_running_site_dirs_lists_this_interpreters_packages():
    import numpy

    dirs = running_site_dirs()
    assert dirs and all(Path(d).is_dir() for d in dirs)
    assert any(Path(numpy.__file__).resolve().is_relative_to(Path(d).resolve()) for d in dirs), dirs
    assert str(REPO) not in dirs  # the checkout itself is never made visible to the installed copy

