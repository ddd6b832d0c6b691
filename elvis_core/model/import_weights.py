"""Reading published weight files for ``elvis import`` — every limit checked before anything is allocated.

- ``.safetensors``: the JSON header is read (≤ 100 MB, depth-checked) and every entry checked against the file: a
  known dtype, a shape of non-negative integers, ``data_offsets`` inside the file and of exactly
  ``prod(shape) × itemsize`` bytes; the total against ``ELVIS_MAX_IMPORT_MB`` (default 2 048 MiB; BioViL-T's text
  model is 0.44 GB). A 40 GB sparse file is refused from its header, without reading a byte of data.
- ``.pt`` / ``.bin`` (a torch zip archive): the zip's central directory is read first; the sum of the members'
  uncompressed sizes must stay under the same limit, and deflated members may not expand to more than 4 × the
  file (+ 64 MB): a 7 MB deflated ``.pt`` that would inflate to 1.76 GB is refused before ``torch.load``.
  Only ``torch.load(..., weights_only=True)`` reads it (a pickle of anything but tensors is refused).
- every floating-point tensor must be finite: NaN/inf weights (bit flips, a diverged run) are refused by name.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import struct
from pathlib import Path
from typing import Dict

import torch

from elvis_core.errors import ModelImportError

_MB = 1 << 20
_BAD = "not a readable safetensors file"
_ST_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
              "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def max_import_bytes() -> int:
    try:
        v = int(float(os.environ.get("ELVIS_MAX_IMPORT_MB", "") or 2048))
    except ValueError:
        v = 2048
    return max(1, v) * _MB


def check_safetensors_header(path: os.PathLike | str, error=ModelImportError, limit: int | None = None) -> int:
    """Validate a safetensors file from its header only; returns the bytes its tensors take. Raises ``error``."""
    from elvis_core.io.paths import require_regular_file
    from elvis_core.io.safe_json import loads_checked

    limit = max_import_bytes() if limit is None else limit
    size = require_regular_file(path, error, "weights file").st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise error("not a readable safetensors file (truncated: no header)", path)
        (n,) = struct.unpack("<Q", head)
        if n > 100 * _MB or 8 + n > size:
            raise error(f"not a readable safetensors file (damaged: its header claims {n} bytes; the file has {size})",
                        path)
        hdr = loads_checked(f.read(n), path, error, max_depth=4, what="safetensors header")
    if not isinstance(hdr, dict):
        raise error("not a readable safetensors file (damaged: the header is not an object)", path)
    data = size - 8 - n
    total = 0
    spans = []
    for name, e in hdr.items():
        if name == "__metadata__":
            continue
        nm = repr(str(name)[:60])
        if not isinstance(e, dict) or e.get("dtype") not in _ST_DTYPES:
            raise error(f"{_BAD} (damaged: tensor {nm} has no known dtype)", path)
        shape, offs = e.get("shape"), e.get("data_offsets")
        if not isinstance(shape, list) or len(shape) > 8 or not all(
                isinstance(x, int) and not isinstance(x, bool) and 0 <= x < (1 << 40) for x in shape):
            raise error(f"{_BAD} (damaged: tensor {nm} has an invalid shape)", path)
        if not isinstance(offs, list) or len(offs) != 2 or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in offs):
            raise error(f"{_BAD} (damaged: tensor {nm} has invalid offsets)", path)
        nbytes = math.prod(shape) * _ST_DTYPES[e["dtype"]]
        if offs[0] < 0 or offs[1] - offs[0] != nbytes or offs[1] > data:
            raise error(f"{_BAD} (damaged or truncated: tensor {nm} claims bytes "
                        f"{offs[0]}..{offs[1]} of {data})", path)
        total += nbytes
        spans.append((offs[0], offs[1]))
        if total > limit:
            raise error(f"the tensors take more than {limit // _MB} MiB (ELVIS_MAX_IMPORT_MB): refused before "
                        "reading", path)
    spans.sort()
    if any(b[0] < a[1] for a, b in zip(spans, spans[1:])):
        raise error("not a readable safetensors file (damaged: tensors overlap)", path)
    return total


def check_torch_zip(path: os.PathLike | str, limit: int | None = None) -> None:
    """Refuse a torch zip archive whose directory promises more than the limit, or deflated members that expand
    far beyond the file (a zip bomb), before ``torch.load`` allocates anything. Legacy (non-zip) files are bounded
    by their size."""
    import zipfile

    limit = max_import_bytes() if limit is None else limit
    size = os.path.getsize(path)
    if size > limit:
        raise ModelImportError(f"the file is {size // _MB} MiB: more than {limit // _MB} MiB (ELVIS_MAX_IMPORT_MB)",
                               path)
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise ModelImportError(f"truncated or damaged PyTorch file ({type(err).__name__})", path) from None
    if len(infos) > 1_000_000:
        raise ModelImportError(f"the archive lists {len(infos)} members", path)
    total = sum(max(0, i.file_size) for i in infos)
    inflated = sum(max(0, i.file_size) for i in infos if i.compress_type != zipfile.ZIP_STORED)
    if total > limit:
        raise ModelImportError(f"the archive unpacks to {total // _MB} MiB: more than {limit // _MB} MiB "
                               "(ELVIS_MAX_IMPORT_MB)", path)
    if inflated > 4 * size + 64 * _MB:
        raise ModelImportError(f"compressed members expand to {inflated // _MB} MiB from a {size // _MB} MiB file "
                               "(a zip bomb?): refused", path)


def check_finite(state: Dict[str, torch.Tensor], path) -> None:
    """NaN or infinite values in a floating-point tensor: refused, naming the tensors."""
    bad = [k for k, v in state.items() if v.dtype.is_floating_point and v.numel() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ModelImportError(f"tensor(s) with NaN or infinite values (damaged file or a diverged run): "
                               f"{', '.join(sorted(bad)[:5])}{more}", path)


# ---------------------------------------------------------------------------------------------------- reading
def sha256_file(path: Path, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def read_weights(path: os.PathLike | str) -> Dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a ``.safetensors`` file or a PyTorch ``.pt``/``.bin`` (weights only).

    Raises :class:`ModelImportError` naming the file: missing, empty, truncated, not weights, a pickle with
    anything but tensors (refused by ``weights_only=True``), or no tensors at all."""
    from elvis_core.io.paths import require_regular_file

    p = Path(path)
    if not os.path.lexists(p):
        raise ModelImportError("file not found", p)
    if require_regular_file(p, ModelImportError, "weights file").st_size == 0:
        raise ModelImportError("empty file", p)
    if p.suffix == ".safetensors":
        check_safetensors_header(p)
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise ModelImportError(f"not a readable safetensors file ({str(err).splitlines()[0]})", p) from None
    else:
        import pickle
        import zipfile

        check_torch_zip(p)
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            first = str(err).splitlines()[0] if str(err) else "unsupported content"
            if "weights_only" in str(err) or "Unsupported" in str(err) or "global" in str(err).lower():
                raise ModelImportError("refused: the file holds more than tensors (weights-only loading refuses "
                                       "other Python objects; only plain state dicts are imported)", p) from None
            raise ModelImportError(f"not a PyTorch weights file ({first})", p) from None
        except (EOFError, zipfile.BadZipFile) as err:
            raise ModelImportError(f"truncated or damaged PyTorch file ({type(err).__name__})", p) from None
        except (RuntimeError, OSError, ValueError, TypeError, AttributeError, KeyError, IndexError) as err:
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            msg = re.split(r"(?<=[a-z])\. ", msg)[0]  # torch's first sentence; the rest is advice for its developers
            kind = "truncated or damaged" if re.search(r"zip|archive|central directory|EOF|corrupt|failed finding",
                                                       msg, re.I) else "unreadable"
            raise ModelImportError(f"{kind} PyTorch file ({msg[:160]})", p) from None
    if isinstance(state, dict) and len(state) == 1 and isinstance(next(iter(state.values())), dict):
        (key, inner), = state.items()
        if key in ("state_dict", "model", "model_state_dict"):
            state = inner
    if not isinstance(state, dict):
        raise ModelImportError(f"expected a state dict (names → tensors), found a {type(state).__name__}", p)
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelImportError(f"expected a state dict of tensors; {len(bad)} entr(y/ies) are not tensors, e.g. "
                               f"{str(bad[0])[:60]!r}", p)
    if not state:
        raise ModelImportError("holds no tensors", p)
    check_finite(state, p)
    return state


