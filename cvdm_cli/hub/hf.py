"""The door to the Hugging Face hub: downloads, the hub cache, offline mode, sha256 checks.

This is the only module that imports huggingface_hub. It downloads with
``hf_hub_download`` into the hub's standard cache and lets huggingface_hub read its own
environment (HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE, HF_ENDPOINT, HF_TOKEN); note that
huggingface_hub reads most of them once, when it is first imported.

Verification: every downloaded or cached file is checked by sha256, through the
verified-markers of :mod:`cvdm_cli.hub.verify` (which does not need huggingface_hub, so that
packaged models are checked without importing it; its names are re-exported here).

Network behaviour: a pinned (40-hex commit) file that is cached is used without any
request. Otherwise one metadata request (HEAD, no retries, HF_HUB_ETAG_TIMEOUT seconds)
decides quickly between "download", "use the cache" (hub unreachable, unpinned spec
cached) and an :class:`errors.OfflineError`; network failures never escape as raw
exceptions.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub import constants
from huggingface_hub import errors as hf_errors

from cvdm_cli import errors
from cvdm_cli.core.progress import ProgressCallback
from cvdm_cli.hub.verify import (  # re-exported: the hub's checks are these
    COMMIT_RE,
    check_sha256,
    marker_dir,
    marker_sha256,
    sha256_cached,
    sha256_file,
    write_marker,
)
from cvdm_cli.hub.verify import SHA256_RE as _SHA256_RE

__all__ = [
    "Fetched",
    "HubError",
    "HubFile",
    "blob_sha256",
    "cache_root",
    "cached_path",
    "check_sha256",
    "commit_of",
    "discard",
    "endpoint",
    "fetch",
    "is_offline",
    "marker_dir",
    "marker_sha256",
    "sha256_cached",
    "sha256_file",
    "write_marker",
]


class HubError(errors.CvdmError):
    """The hub answered in an unexpected way, or a download broke off midway."""


@dataclass(frozen=True)
class HubFile:
    """One file of a hub model repository; ``revision`` None means the ``main`` branch."""

    repo_id: str
    filename: str
    revision: str | None = None

    @property
    def pinned(self) -> bool:
        return self.revision is not None and COMMIT_RE.fullmatch(self.revision) is not None

    @property
    def spec(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"hf://{self.repo_id}/{self.filename}{rev}"


@dataclass(frozen=True)
class Fetched:
    """A hub file in the local cache.

    ``sha256`` is the verified hash when ``verified`` (the expected one), else the hash of
    the file as it is; ``commit`` is the commit the cached file belongs to.
    """

    path: Path
    commit: str | None
    sha256: str
    verified: bool
    downloaded: bool


# --- settings read through huggingface_hub ------------------------------------------------


def is_offline() -> bool:
    """huggingface_hub's offline mode (HF_HUB_OFFLINE=1, read when it was imported)."""
    check = getattr(constants, "is_offline_mode", None)
    return bool(check()) if callable(check) else bool(constants.HF_HUB_OFFLINE)


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The hub cache folder: ``cache_dir`` or huggingface_hub's (HF_HUB_CACHE, HF_HOME/hub)."""
    return Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser()


def endpoint() -> str:
    """The hub URL (HF_ENDPOINT, default https://huggingface.co)."""
    return str(constants.ENDPOINT)


# --- cache lookup -------------------------------------------------------------------------


def cached_path(file: HubFile, cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The cached copy of ``file`` (no network), or None.

    A branch/tag revision (or none: ``main``) is looked up through the cache's refs, as
    huggingface_hub does offline.
    """
    try:
        found = huggingface_hub.try_to_load_from_cache(
            file.repo_id,
            file.filename,
            cache_dir=str(cache_root(cache_dir)),
            revision=file.revision or constants.DEFAULT_REVISION,
        )
    except (hf_errors.HFValidationError, ValueError) as exc:
        raise errors.ConfigError(f"invalid hub file ({exc})", path=file.spec) from None
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def commit_of(path: Path) -> str | None:
    """The commit of a cached file (``.../snapshots/<commit>/<filename>``)."""
    parts = Path(path).parts
    if "snapshots" in parts:
        i = len(parts) - 1 - parts[::-1].index("snapshots")
        if i + 1 < len(parts) and COMMIT_RE.fullmatch(parts[i + 1]):
            return parts[i + 1]
    return None


def blob_sha256(path: Path) -> str | None:
    """The sha256 the hub declared for a cached LFS file: its blob's name (the LFS etag)."""
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and _SHA256_RE.fullmatch(real.name):
        return real.name
    return None


def discard(path: Path) -> None:
    """Remove a cached hub file (its snapshot entry and its blob), e.g. a bad download."""
    real = Path(os.path.realpath(path))
    with contextlib.suppress(FileNotFoundError):
        Path(path).unlink()  # the snapshot entry: a symlink, or a copy without symlinks
    if real.parent.name == "blobs":
        with contextlib.suppress(FileNotFoundError):
            real.unlink()


# --- downloads ----------------------------------------------------------------------------


def _network_error_types() -> tuple[type[BaseException], ...]:
    """Transport-level errors of the HTTP library huggingface_hub uses (already imported)."""
    found: list[type[BaseException]] = [hf_errors.OfflineModeIsEnabled, TimeoutError]
    for module_name, names in (
        ("httpx2", ("TransportError",)),
        ("httpx", ("TransportError",)),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        module = sys.modules.get(module_name)
        found += [getattr(module, n) for n in names if module is not None and hasattr(module, n)]
    return tuple(found)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _offline_error(
    file: HubFile, label: str, cache_dir: Path | None, why: str
) -> errors.OfflineError:
    cache = cache_root(cache_dir)
    return errors.OfflineError(
        f"model is not in the hub cache {cache} and {why}",
        path=label,
        hint=f"on a machine with internet run `cvdm models pull {label}`, then copy that"
        f" machine's hub cache ($HF_HOME/hub, default ~/.cache/huggingface/hub) to {cache}"
        " here, or point HF_HUB_CACHE / --cache-dir at a shared copy (docs/models.md)",
    )


def _translate(
    exc: BaseException, file: HubFile, label: str, cache_dir: Path | None
) -> errors.CvdmError:
    """A huggingface_hub / network exception -> the matching cvdm error (never raised raw)."""
    url = f"{endpoint()}/{file.repo_id}/resolve/{file.revision or 'main'}/{file.filename}"
    status = _status(exc)
    not_found = (
        hf_errors.RepositoryNotFoundError,
        hf_errors.RevisionNotFoundError,
        getattr(hf_errors, "RemoteEntryNotFoundError", hf_errors.EntryNotFoundError),
    )
    if isinstance(exc, hf_errors.GatedRepoError):
        return errors.UnknownModelError(
            f"unknown model / file: {file.spec} is gated on the hub",
            path=label,
            hint="accept its conditions on the hub page and set HF_TOKEN",
        )
    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return _offline_error(file, label, cache_dir, "offline mode is on (HF_HUB_OFFLINE=1)")
    if isinstance(exc, hf_errors.LocalEntryNotFoundError):
        return _offline_error(file, label, cache_dir, f"the hub {endpoint()} cannot be reached")
    if isinstance(exc, not_found) or status == 404:
        return errors.UnknownModelError(
            f"unknown model / file: {url} does not exist (repository, revision or file)",
            path=label,
            hint="check the repo id, file name and revision; for a private repo set HF_TOKEN",
        )
    if status in (401, 403):
        return errors.UnknownModelError(
            f"unknown model / file: the hub refused access to {url} (HTTP {status})",
            path=label,
            hint="for a private or gated repo set HF_TOKEN to a token with read access",
        )
    if isinstance(exc, _network_error_types()):
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _offline_error(
            file, label, cache_dir, f"the hub {endpoint()} cannot be reached ({reason})"
        )
    if status is not None and (status >= 500 or status in (408, 429)):
        return _offline_error(
            file, label, cache_dir, f"the hub {endpoint()} is unavailable (HTTP {status})"
        )
    if isinstance(exc, hf_errors.HfHubHTTPError):
        return HubError(
            f"the hub answered HTTP {status} for {url}",
            path=label,
            hint="retry later; rerun with --debug and report it if it persists",
        )
    if isinstance(exc, hf_errors.FileMetadataError):
        return HubError(
            f"{endpoint()} does not answer like a Hugging Face hub ({exc})",
            path=label,
            hint="check HF_ENDPOINT and your proxy settings",
        )
    if isinstance(exc, hf_errors.HFValidationError):
        return errors.ConfigError(f"invalid hub file ({exc})", path=file.spec)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return errors.DiskFullError(
            f"no space left while downloading {label}",
            path=cache_root(cache_dir),
            hint="free space, or set HF_HUB_CACHE / --cache-dir to a larger disk",
        )
    if isinstance(exc, PermissionError):
        return errors.OutputNotWritableError(
            f"the hub cache is not writable ({exc.strerror})",
            path=exc.filename or cache_root(cache_dir),
            hint="set HF_HUB_CACHE / --cache-dir to a writable folder, or pull on a machine"
            " that can write the shared cache",
        )
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return HubError(
        f"download of {url} failed ({text})",
        path=label,
        hint=f"retry with `cvdm models pull {label} --force`",
    )


class _Progress:
    """A tqdm look-alike for ``hf_hub_download(tqdm_class=...)`` that reports to a callback.

    huggingface_hub builds non-tqdm classes as ``cls(total=, initial=, desc=, unit=, ...)``
    and uses them as a context manager calling ``update(n)``; nothing is printed.
    """

    callback: ProgressCallback = staticmethod(lambda done, total: None)  # type: ignore[assignment]

    def __init__(self, *args: Any, total: int | None = None, initial: int = 0, **kwargs: Any):
        self.total = total
        self.n = initial
        self.callback(self.n, self.total)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int | float = 1) -> None:
        self.n += int(n)
        self.callback(self.n, self.total)

    def close(self) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass


# hf_hub_download(tqdm_class=...) is recent (huggingface_hub 1.x); older ones show their own bar.
_ACCEPTS_TQDM_CLASS = "tqdm_class" in inspect.signature(huggingface_hub.hf_hub_download).parameters


def _progress_class(callback: ProgressCallback | None) -> type[_Progress]:
    if callback is None:
        return _Progress
    return type("_CallbackProgress", (_Progress,), {"callback": staticmethod(callback)})


def fetch(
    file: HubFile,
    *,
    label: str,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    force: bool = False,
    expected_sha256: str | None = None,
    progress: ProgressCallback | None = None,
) -> Fetched:
    """Return a verified local copy of a hub file, downloading it only when needed.

    Args:
        file: repo, filename and revision (a pinned commit needs no request when cached).
        label: how the user named the model (registry name or hf:// spec), for messages.
        cache_dir: hub cache folder (default: huggingface_hub's).
        offline: never contact the hub (default: HF_HUB_OFFLINE as read by huggingface_hub).
        force: download again even when cached.
        expected_sha256: the registry's hash; without it, an LFS file is checked against the
            sha256 the hub declares for it (its etag), and other files are not verified.
        progress: ``progress(done_bytes, total_bytes)`` during a download.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    offline = is_offline() if offline is None else offline
    cached = None if force else cached_path(file, cache)

    if cached is not None and (file.pinned or offline):
        return _verify_cached(cached, expected_sha256, label)
    if offline:
        why = "offline mode is on (HF_HUB_OFFLINE=1)"
        if force:
            raise errors.OfflineError(
                "cannot download again (--force) while offline mode is on",
                path=label,
                hint="unset HF_HUB_OFFLINE on a machine with internet",
            )
        raise _offline_error(file, label, cache, why)

    revision = file.revision or constants.DEFAULT_REVISION
    try:
        url = huggingface_hub.hf_hub_url(file.repo_id, file.filename, revision=revision)
        # One HEAD, no retries: decides download / cache / error fast (see module doc).
        meta = huggingface_hub.get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as exc:  # translated below; nothing raw reaches the user
        error = _translate(exc, file, label, cache)
        if cached is not None and isinstance(error, errors.OfflineError):
            return _verify_cached(cached, expected_sha256, label)  # hub down: use the cache
        raise error from None
    if meta.commit_hash is None:
        raise HubError(
            f"{endpoint()} sent no X-Repo-Commit header: not a Hugging Face hub",
            path=label,
            hint="check HF_ENDPOINT and your proxy settings",
        )
    hub_sha = meta.etag if meta.etag and _SHA256_RE.fullmatch(meta.etag) else None
    if expected_sha256 is not None and hub_sha is not None and hub_sha != expected_sha256:
        raise errors.ChecksumMismatchError(
            f"the hub's file {file.filename} at commit {meta.commit_hash} has sha256 {hub_sha},"
            f" expected {expected_sha256}",
            path=label,
            hint="the registry entry does not match the hub; nothing was downloaded — report it",
        )

    was_cached = cached_path(HubFile(file.repo_id, file.filename, meta.commit_hash), cache)
    options: dict[str, Any] = {}
    if _ACCEPTS_TQDM_CLASS:  # our bar instead of the hub's own tqdm output
        options["tqdm_class"] = _progress_class(progress)
    try:
        local = huggingface_hub.hf_hub_download(
            file.repo_id,
            file.filename,
            revision=revision,
            cache_dir=str(cache) if cache is not None else None,
            force_download=force,
            **options,
        )
    except Exception as exc:
        raise _translate(exc, file, label, cache) from None
    path = Path(str(local))
    downloaded = force or was_cached is None
    if not downloaded:
        return _verify_cached(path, expected_sha256 or hub_sha, label)

    expected = expected_sha256 or hub_sha or blob_sha256(path)
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        discard(path)  # a corrupted download never stays in the cache
        raise errors.ChecksumMismatchError(
            f"sha256 mismatch for the download of {file.filename} (commit"
            f" {commit_of(path) or meta.commit_hash}): expected {expected}, got {actual};"
            " the corrupted file was removed from the cache",
            path=label,
            hint=f"re-download with `cvdm models pull {label} --force`",
        )
    write_marker(path, actual)
    return Fetched(
        path=path,
        commit=commit_of(path) or meta.commit_hash,
        sha256=actual,
        verified=expected is not None,
        downloaded=True,
    )


def _verify_cached(path: Path, expected: str | None, label: str) -> Fetched:
    expected = expected or blob_sha256(path)
    if expected is None:  # a non-LFS file and no registry hash: nothing to check against
        return Fetched(path, commit_of(path), sha256_cached(path), False, False)
    check_sha256(path, expected, label=label)
    return Fetched(path, commit_of(path), expected, True, False)
