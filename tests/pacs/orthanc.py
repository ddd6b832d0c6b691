"""A real Orthanc with its DICOMweb plugin on 127.0.0.1, for the PACS tests (Debian: orthanc, orthanc-dicomweb).

Throw-away config and storage in a temp folder, a free port, HTTP only on the loopback, basic auth on (so the auth
path is exercised), stopped after the module. Skipped with a reason only when the Orthanc binary is absent (CI
installs it through .ci/run, so there it runs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.path.exists("/usr/sbin/Orthanc") else None)
PLUGIN_CANDIDATES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
                     "/usr/lib/orthanc/libOrthancDicomWeb.so")
USER, PASSWORD = "elvis", "s3cret-pw-for-tests"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrthancServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.proc = None
        self.log = root / "orthanc.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.base}/dicom-web"

    def config(self) -> dict:
        plugin = next((p for p in PLUGIN_CANDIDATES if os.path.exists(p)), None)
        return {
            "Name": "ELVIS-TEST", "StorageDirectory": str(self.root / "db"), "IndexDirectory": str(self.root / "db"),
            "HttpPort": self.port, "HttpServerEnabled": True, "RemoteAccessAllowed": False,
            "DicomServerEnabled": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [plugin] if plugin else [], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "HttpTimeout": 30, "StableAge": 1, "ConcurrentJobs": 1, "HttpThreadsCount": 8,
        }

    def start(self) -> None:
        cfg = self.root / "orthanc.json"
        cfg.write_text(json.dumps(self.config()))
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([ORTHANC, str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        import requests

        t_end = time.monotonic() + 30
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                r = requests.get(f"{self.base}/system", auth=(USER, PASSWORD), timeout=1)
                if r.ok:
                    plugins = requests.get(f"{self.base}/plugins", auth=(USER, PASSWORD), timeout=2).json()
                    if "dicom-web" not in plugins:
                        raise RuntimeError(f"Orthanc runs without its DICOMweb plugin: {plugins}")
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer within 30 s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL, as a crash would (no clean shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def upload(self, path) -> dict:
        import requests

        r = requests.post(f"{self.base}/instances", data=Path(path).read_bytes(), auth=(USER, PASSWORD), timeout=30)
        r.raise_for_status()
        return r.json()
