"""A DICOM that a folder scan lists but whose pixels cannot be decoded, for tests of "unreadable images are listed,
not fatal". A file cut short in its pixel data no longer serves: the scan catches it (``elvis_core.io.truncation``)."""

import pydicom


def make_undecodable(path) -> None:
    """Rewrite ``path`` in place so that its header claims twice its rows: the file is whole and its header reads,
    the pixel read fails (less pixel data than the header needs)."""
    ds = pydicom.dcmread(str(path))
    ds.Rows = 2 * int(ds.Rows)
    ds.save_as(str(path))
