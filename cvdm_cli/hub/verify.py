"""sha256 checks of weights files, remembered in small "verified" markers.

A file is hashed (sha256) once; a JSON marker in ``$HF_HOME/cvdm/verified/`` then records
the hash with the file's identity (real path, size, inode, device, mtime and ctime in ns),
so later runs skip the hash until the file changes. Markers are best-effort: a read-only
HF_HOME only means re-hashing each run.

Packaged, hub and local weights are all checked here, without huggingface_hub: resolving a
packaged model must not pay for importing it (:mod:`cvdm_cli.hub.hf` does, for downloads).
``HF_HOME`` is therefore read from the environment with huggingface_hub's own rule
(:func:`hf_home`), so markers land where the hub keeps its cache.

Only the standard library is imported here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from cvdm_cli import errors
from cvdm_cli.io.atomic import write_text_atomic

# a pinned hub revision: a full 40-hex commit id (branch and tag names move)
COMMIT_RE = re.compile(r"[0-9a-f]{40}")

__all__ = [
    "COMMIT_RE",
    "check_sha256",
    "hf_home",
    "marker_dir",
    "marker_sha256",
    "sha256_cached",
    "sha256_file",
    "write_marker",
]

SHA256_RE = re.compile(r"[0-9a-f]{64}")
_HASH_CHUNK = 4 * 1024 * 1024  # bytes read per hashlib update


def hf_home() -> Path:
    """``$HF_HOME``, else ``$XDG_CACHE_HOME/huggingface``, else ``~/.cache/huggingface``.

    huggingface_hub's rule (``constants.HF_HOME``), read here at call time: huggingface_hub
    reads it once, when first imported, so both agree unless the variable changes later.
    """
    default = os.path.join(os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache")), "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(os.getenv("HF_HOME", default))))


def marker_dir() -> Path:
    """Where verified-markers live: ``$HF_HOME/cvdm/verified``."""
    return hf_home() / "cvdm" / "verified"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _identity(path: Path) -> dict[str, Any]:
    real = os.path.realpath(path)
    st = os.stat(real)
    return {
        "path": real,
        "size": st.st_size,
        "inode": st.st_ino,
        "device": st.st_dev,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


def _marker_file(real_path: str) -> Path:
    return marker_dir() / (hashlib.sha256(real_path.encode()).hexdigest()[:32] + ".json")


def marker_sha256(path: str | os.PathLike[str]) -> str | None:
    """The hash recorded for ``path`` if its marker matches the file as it is now."""
    try:
        ident = _identity(Path(path))
        record = json.loads(_marker_file(ident["path"]).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in ident.items()):
        return None
    sha = record.get("sha256")
    return sha if isinstance(sha, str) and SHA256_RE.fullmatch(sha) else None


def write_marker(path: str | os.PathLike[str], sha256: str) -> bool:
    """Record that ``path`` (as it is now) hashes to ``sha256``; False if not writable."""
    try:
        record = {**_identity(Path(path)), "sha256": sha256}
        target = _marker_file(record["path"])
        target.parent.mkdir(parents=True, exist_ok=True)
        # no fsync: a marker lost in a power cut only means hashing the file again
        write_text_atomic(target, json.dumps(record), fsync=False)
    except OSError:
        return False
    return True


def sha256_cached(path: str | os.PathLike[str], *, mark: bool = True) -> str:
    """The file's sha256, from its marker when still valid, else hashed (and marked if
    ``mark``)."""
    sha = marker_sha256(path)
    if sha is None:
        sha = sha256_file(path)
        if mark:
            write_marker(path, sha)
    return sha


def check_sha256(
    path: str | os.PathLike[str],
    expected: str,
    *,
    label: str,
    hint: str | None = None,
    use_marker: bool = True,
) -> None:
    """Raise :class:`errors.ChecksumMismatchError` unless ``path`` hashes to ``expected``.

    With ``use_marker`` a still-valid marker stands in for the hash; a fresh hash is
    recorded in a marker either way.
    """
    actual = marker_sha256(path) if use_marker else None
    if actual is None:
        actual = sha256_file(path)
        write_marker(path, actual)
    if actual != expected:
        raise errors.ChecksumMismatchError(
            f"sha256 mismatch for {path}: expected {expected}, got {actual}",
            path=label,
            hint=hint or f"re-download with `cvdm models pull {label} --force`",
        )
