"""JSON from files and servers we do not trust: the nesting depth is measured by a linear scan **before**
``json.loads`` (which recurses: a 100 000-deep array is a RecursionError, and Python's recursion limit is not a
safety limit), and every failure of the parser — including Python's cap on integer digits (a 100 000-digit number
is a plain ``ValueError``) — becomes one clean error naming the file."""

from __future__ import annotations

import json
import os
import re
from typing import Any, Optional, Type

from elvis_core.errors import ElvisError

#: deeper than any file we read (a COCO file is 4 deep, a model config 6, DICOM JSON of a study ~5-10)
MAX_JSON_DEPTH = 64

_JSON_STR = re.compile(rb'"(?:[^"\\]|\\.)*"?')
_BRACKETS = re.compile(rb"[\[\]{}]")


def json_depth(data: bytes | str, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of a JSON text (brackets outside strings), in linear time without recursion; stops early
    past ``limit``."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    depth = best = 0
    for m in _BRACKETS.finditer(_JSON_STR.sub(b"", data)):
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > best:
                best = depth
                if best > limit:
                    return best
        else:
            depth -= 1
    return best


def loads_checked(data: bytes | str, path: Optional[os.PathLike | str] = None, error: Type[ElvisError] = ElvisError,
                  max_depth: int = MAX_JSON_DEPTH, what: str = "JSON") -> Any:
    """``json.loads`` with the depth checked first; any parser failure is ``error(problem, path)``."""
    pre = "not" if what == "JSON" else f"{what} is not"
    if json_depth(data, max_depth) > max_depth:
        raise error(f"{pre} usable JSON: nested too deeply (more than {max_depth} levels)", path)
    try:
        return json.loads(data)
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise error(f"{pre} usable JSON: nested too deeply", path) from None
    except UnicodeDecodeError:
        raise error(f"{pre} valid JSON (not UTF-8 text)", path) from None
    except json.JSONDecodeError as err:
        raise error(f"{pre} valid JSON ({err.msg} at line {err.lineno} column {err.colno})", path) from None
    except ValueError as err:  # "Exceeds the limit (4300 digits) for integer string conversion"
        detail = "a number with too many digits" if "digits" in str(err) else type(err).__name__
        raise error(f"{pre} valid JSON ({detail})", path) from None


def read_json_file(path: os.PathLike | str, error: Type[ElvisError] = ElvisError, max_bytes: int = 64 << 20,
                   max_depth: int = MAX_JSON_DEPTH, what: str = "JSON") -> Any:
    """A JSON file: a regular file (no FIFO, no device), at most ``max_bytes``, depth-checked, parsed cleanly."""
    from elvis_core.io.paths import require_regular_file

    st = require_regular_file(path, error, what + " file")
    if st.st_size > max_bytes:
        raise error(f"is {st.st_size >> 20} MiB: larger than the limit of {max_bytes >> 20} MiB for a {what} file",
                    path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise error(f"cannot be read ({err.strerror or type(err).__name__})", path) from None
    if len(data) > max_bytes:
        raise error(f"is larger than the limit of {max_bytes >> 20} MiB for a {what} file", path)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return loads_checked(data, path, error, max_depth, what)
