"""Fixtures of the PACS tests: a real Orthanc (see tests/pacs/orthanc.py), one per test module."""

from __future__ import annotations

import pytest

from tests.pacs.orthanc import ORTHANC, OrthancServer


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if ORTHANC is None:
        pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run does)")
    srv = OrthancServer(tmp_path_factory.mktemp("orthanc"))
    srv.start()
    yield srv
    srv.stop()
