"""`elvis models download`: the public models from the Hugging Face hub, pinned and checked, then imported.

Each model names its repository, a **pinned revision** (the tags hi-ml-multimodal itself pins: CXR-BERT-specialized
``v1.1``, BioViL-T ``v1.0``) and the files the import needs — never the repository's Python code, which is never run.
Every file is fetched with ``huggingface_hub`` (``HF_ENDPOINT`` / ``--endpoint`` point it at a mirror) and checked
before use:

- against the **published MD5** where the authors publish one (hi-ml-multimodal's ``BIOVIL_IMAGE_WEIGHTS_MD5`` /
  ``BIOVIL_T_IMAGE_WEIGHTS_MD5`` for the image weights);
- against the hub's own **SHA-256** of every git-lfs file (the ETag of the file's metadata), and its size;
- for being a git-lfs *pointer* instead of the file (a clone without git-lfs gives those).

Then ``elvis import`` runs in the same step, into ``DIR/<model>``; the raw files stay in ``DIR/downloads/<model>``.
Offline (or a hub that cannot be reached), one clear message lists the URLs to fetch by hand and the ``elvis
import`` line to run after. The folders written are readable by the group and other users (0755 / 0644), like any
installed model, so a shared model folder works.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from elvis_core.errors import ElvisError

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"
CXR_BERT_REPO = "microsoft/BiomedVLP-CXR-BERT-specialized"
BIOVIL_T_REPO = "microsoft/BiomedVLP-BioViL-T"
TEXT_FILES = ("config.json", "vocab.txt", "tokenizer_config.json", "pytorch_model.bin")


class ModelDownloadError(ElvisError):
    """A model could not be downloaded or did not pass its checks."""


@dataclass(frozen=True)
class HubFile:
    name: str
    md5: Optional[str] = None  # published by the model's authors (hi-ml-multimodal)
    role: str = "text"  # "image" (the hi-ml image weights) or "text" (the Hugging Face text folder)


@dataclass(frozen=True)
class HubModel:
    key: str
    repo_id: str
    revision: str
    files: Tuple[HubFile, ...]
    importer: Optional[str] = None  # the `elvis import` variant, None for a text model only
    note: str = ""


MODELS: Dict[str, HubModel] = {
    "biovil": HubModel(
        "biovil", CXR_BERT_REPO, "v1.1",
        (HubFile("biovil_image_resnet50_proj_size_128.pt", md5="02ce6ee460f72efd599295f440dbb453", role="image"),)
        + tuple(HubFile(n) for n in TEXT_FILES), importer="biovil",
        note="BioViL image model + CXR-BERT-specialized (hi-ml-multimodal's CXR_BERT_COMMIT_TAG)"),
    "biovil-t": HubModel(
        "biovil-t", BIOVIL_T_REPO, "v1.0",
        (HubFile("biovil_t_image_model_proj_size_128.pt", md5="a83080e2f23aa584a4f2b24c39b1bb64", role="image"),)
        + tuple(HubFile(n) for n in TEXT_FILES), importer="biovil-t",
        note="BioViL-T image + text model (hi-ml-multimodal's BIOVIL_T_COMMIT_TAG)"),
    "cxr-bert": HubModel(
        "cxr-bert", CXR_BERT_REPO, "v1.1", tuple(HubFile(n) for n in TEXT_FILES),
        note="CXR-BERT-specialized text model only (a text.path for training)"),
}


@dataclass
class DownloadResult:
    model: str
    files: Dict[str, Path] = field(default_factory=dict)
    checked: List[str] = field(default_factory=list)  # one line per file: what was verified
    checkpoint: Optional[Path] = None
    text_folder: Optional[Path] = None


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def file_url(m: HubModel, name: str, revision: Optional[str] = None, base: Optional[str] = None) -> str:
    return f"{(base or endpoint()).rstrip('/')}/{m.repo_id}/resolve/{revision or m.revision}/{name}"


def lfs_pointer(path: os.PathLike | str) -> Optional[str]:
    """The problem line when ``path`` is a git-lfs pointer file (a clone without git-lfs), else None."""
    p = Path(path)
    try:
        if not p.is_file() or p.stat().st_size > 1024:
            return None
        head = p.read_bytes()[:200]
    except OSError:
        return None
    if head.startswith(LFS_POINTER_PREFIX):
        return ("a git-lfs pointer, not the file itself (the repository was cloned without git-lfs): run "
                "`git lfs pull` in the clone, or `elvis models download`")
    return None


def make_shareable(root: os.PathLike | str) -> None:
    """Folders 0755, files 0644 under ``root`` (a model folder other users of the machine can read)."""
    root = Path(root)
    if root.is_dir():
        os.chmod(root, 0o755)
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
            for f in filenames:
                fp = os.path.join(dirpath, f)
                if not os.path.islink(fp):
                    os.chmod(fp, 0o644)
    elif root.is_file():
        os.chmod(root, 0o644)


def _digests(path: Path) -> Tuple[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def manual_instructions(m: HubModel, revision: str, out_dir: Path) -> str:
    """What to do by hand when the hub cannot be reached: the URLs and the import line."""
    lines = [f"download these {len(m.files)} files by hand (revision {revision}) into {out_dir / 'downloads' / m.key}:"]
    lines += [f"  {file_url(m, f.name, revision, 'https://huggingface.co')}"
              + (f"  (MD5 {f.md5})" if f.md5 else "") for f in m.files]
    if m.importer:
        img = next(f.name for f in m.files if f.role == "image")
        d = out_dir / "downloads" / m.key
        lines.append(f"then: elvis import {m.importer} --image-weights {d / img} --text-model {d} "
                     f"--out {out_dir / m.key}")
    return "\n".join(lines)


def _hub_call(what: str, fn, *args, **kw):
    """Run a huggingface_hub call; any failure → ModelDownloadError (caller adds the manual instructions)."""
    try:
        return fn(*args, **kw)
    except ModelDownloadError:
        raise
    except Exception as err:  # noqa: BLE001 - connection, HTTP, offline, revision/entry not found: one line
        name = type(err).__name__
        if name == "OfflineModeIsEnabled":
            raise ModelDownloadError(f"{what}: HF_HUB_OFFLINE is set, the hub is not contacted (unset it to "
                                     "download)") from None
        msg = str(err).splitlines()[0][:160] if str(err) else ""
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status is not None:
            msg = f"HTTP {status}"
        raise ModelDownloadError(f"{what}: {name}{': ' + msg if msg else ''}") from None


def download_model(key: str, out_dir: os.PathLike | str, revision: Optional[str] = None,
                   hub_endpoint: Optional[str] = None, do_import: bool = True,
                   progress: Optional[Callable[[str], None]] = None,
                   models: Optional[Dict[str, HubModel]] = None) -> DownloadResult:
    """Download ``key``'s files into ``out_dir/downloads/<key>``, check them, import into ``out_dir/<key>``."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download

    table = models or MODELS
    if key not in table:
        raise ModelDownloadError(f"unknown model {key!r} (known: {', '.join(table)})")
    m = table[key]
    rev = revision or m.revision
    base = (hub_endpoint or endpoint()).rstrip("/")
    out_dir = Path(out_dir)
    target = out_dir / m.key
    if m.importer and target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ModelDownloadError("already there (remove it or choose another --dir)", target)
    dl = out_dir / "downloads" / m.key
    try:
        dl.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ModelDownloadError(f"cannot create the download folder ({err.strerror or err})", dl) from None
    res = DownloadResult(model=m.key)
    say = progress or (lambda s: None)
    try:
        for f in m.files:
            url = file_url(m, f.name, rev, base)
            meta = _hub_call(f"{url}: metadata", get_hf_file_metadata, url, endpoint=base)
            size = int(meta.size or 0)
            say(f"{f.name}: {size / 1e6:.1f} MB" if size else f.name)
            path = Path(_hub_call(f"{url}: download", hf_hub_download, m.repo_id, f.name, revision=rev,
                                  local_dir=str(dl), endpoint=base))
            res.files[f.name] = path
            res.checked.append(_check(path, f, meta, url))
    except ModelDownloadError as err:
        raise ModelDownloadError(f"{err}\n{manual_instructions(m, rev, out_dir)}") from None
    make_shareable(dl)
    res.text_folder = dl
    if do_import and m.importer:
        from elvis_core.model.importers import import_biovil

        img = res.files[next(f.name for f in m.files if f.role == "image")]
        res.checkpoint = import_biovil(m.importer, img, dl, target)
        make_shareable(res.checkpoint)
    return res


def _check(path: Path, f: HubFile, meta, url: str) -> str:
    """Verify one downloaded file; the line that says what was checked (ModelDownloadError when it fails)."""
    problem = lfs_pointer(path)
    if problem:
        raise ModelDownloadError(f"{url}: the server sent {problem}", path)
    size = int(getattr(meta, "size", 0) or 0)
    if size and path.stat().st_size != size:
        raise ModelDownloadError(f"size {path.stat().st_size} differs from the hub's {size} bytes (truncated?)", path)
    md5, sha = _digests(path)
    checks = []
    etag = str(getattr(meta, "etag", "") or "").strip('"').lower()
    if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag):  # git-lfs files: the ETag is their SHA-256
        if sha != etag:
            raise ModelDownloadError(f"SHA-256 {sha[:16]}… differs from the hub's {etag[:16]}… (corrupted download "
                                     "or a tampered mirror): not used", path)
        checks.append("SHA-256 = hub's")
    if f.md5:
        if md5 != f.md5:
            raise ModelDownloadError(f"MD5 {md5} differs from the published {f.md5} (hi-ml-multimodal): not the "
                                     "published weights, not used", path)
        checks.append("MD5 = published")
    checks.append(f"sha256 {sha[:16]}")
    return f"{path.name}: {path.stat().st_size:,} bytes, " + ", ".join(checks)
