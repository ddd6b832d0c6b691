"""Only regular files are read: a FIFO (opening it blocks for ever), a link to /dev/zero (reads without end), a
socket are refused by ``stat`` before anything opens them, with one line naming the path, by every reader and by
``elvis inspect`` / ``elvis eval`` (no hang)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from elvis_core.errors import ElvisError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def specials(tmp_path):
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.csv"
    zero.symlink_to("/dev/zero")
    sock_path = tmp_path / "s.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_path))
    yield {"fifo": fifo, "zero": zero, "socket": sock_path}
    s.close()


def _no_hang(fn, *args, **kw):
    """Run fn in a thread: it must end (a hang fails the test instead of blocking the suite)."""
    box = {}

    def target():
        try:
            box["value"] = fn(*args, **kw)
        except BaseException as err:  # noqa: BLE001
            box["error"] = err

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), f"{fn.__name__} hangs"
    return box


def _readers():
    from elvis_core.io.annotations import read_ms_cxr_csv
    from elvis_core.io.dicom import read_header
    from elvis_core.io.images import raster_header_shape, read_image
    from elvis_core.io.privacy import dicom_tag_rows
    from elvis_core.io.report import read_report
    from elvis_core.io.safe_json import read_json_file
    from elvis_core.model.checkpoint import read_checkpoint_config
    from elvis_core.review.importer import import_annotations
    from elvis_core.review.store import ReviewStore

    return [read_header, read_image, raster_header_shape, dicom_tag_rows, read_report, read_ms_cxr_csv,
            read_json_file, lambda p: read_checkpoint_config(_ck_dir(p)), lambda p: import_annotations(p, p.parent),
            lambda p: ReviewStore(p, read_only=True), lambda p: ReviewStore(p)]


def _ck_dir(p: Path) -> Path:
    d = p.parent / f"ck_{p.name}"
    d.mkdir(exist_ok=True)
    if not (d / "config.json").is_symlink():
        (d / "config.json").symlink_to(p)
    return d


@pytest.mark.parametrize("kind", ["fifo", "zero", "socket"])
def test_every_reader_refuses_special_files(specials, kind):
    path = specials[kind]
    for reader in _readers():
        box = _no_hang(reader, path)
        err = box.get("error")
        assert isinstance(err, ElvisError), (reader, box)
        msg = str(err)
        assert ("not a regular" in msg or "not a file" in msg) and "\n" not in msg, (reader, msg)


def test_coco_json_fifo(tmp_path):
    from elvis_core.review.importer import import_annotations

    fifo = tmp_path / "ann.json"
    os.mkfifo(fifo)
    box = _no_hang(import_annotations, fifo, tmp_path)
    assert isinstance(box.get("error"), ElvisError) and "named pipe" in str(box["error"]) or "not a file" in str(
        box.get("error"))


def _cli(*argv, timeout=60):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "elvis_core", *argv], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(REPO))


@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_inspect_and_eval_on_special_files_end_with_one_line(specials, kind, tmp_path):
    path = specials[kind]
    r = _cli("inspect", str(path))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(path) in lines[0] and "not a regular" in lines[0], r.stderr
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").symlink_to(path)
    r = _cli("eval", "--checkpoint", str(ck), "--annotations", str(path), "--images", str(tmp_path))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not a regular" in lines[0], r.stderr
