"""The model registry (``weights.toml``) and model resolution.

``weights.toml`` ships inside the package (``cvdm_cli/weights.toml``; the top-level
``weights.toml`` of the repository is a symlink to it). One table per model name::

    [cvdm-small-v1]
    description = "..."
    default = true                  # exactly one entry
    scale = 2                       # output / input sampling
    structures = ["filaments", "vesicles"]
    pixel_size_nm = [55, 110]       # widefield input pixel sizes it suits (min, max)
    license = "BSD-3-Clause"
    package = "models/cvdm-small-v1.safetensors"   # a file next to weights.toml ...
    # hub = { repo_id = "owner/name", filename = "x.safetensors", revision = "<40 hex>" }
    sha256 = "<64 hex>"             # of the weights file, always

:func:`resolve_model` turns a ``--model`` value (a registry name, a local ``.safetensors``
path, or ``hf://owner/repo/path/file.safetensors[@revision]``) into a local, checksummed
file. Downloads and the hub cache live in :mod:`cvdm_cli.hub.hf`, the only module that
imports huggingface_hub; it is imported lazily, only for hub entries and ``hf://`` specs, so
that reading the registry and resolving a packaged or local model never load it. sha256
checks and verified-markers are in :mod:`cvdm_cli.hub.verify` (standard library only).

Maintainers: ``python -m cvdm_cli.hub.registry update-sha NAME`` (re)computes the sha256 of a
model's file and writes it into weights.toml; ``python -m cvdm_cli.hub.registry check``
validates the file.

Only the standard library and cvdm's torch-free helpers (errors, the weights format rule,
atomic writes, sha256 checks) are imported at module level.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from cvdm_cli import errors
from cvdm_cli.core.progress import ProgressCallback
from cvdm_cli.hub import verify
from cvdm_cli.hub.verify import COMMIT_RE
from cvdm_cli.io.atomic import write_text_atomic
from cvdm_cli.io.weights import (
    PICKLE_SUFFIXES,
    WEIGHTS_SUFFIX,
    refuse_unsafe_format,
    weights_format_problem,
    weights_suffix,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport (same API)
    import tomli as tomllib

if TYPE_CHECKING:  # pragma: no cover
    from cvdm_cli.hub.hf import HubFile

REGISTRY_ENV = "CVDM_REGISTRY"  # an alternative weights.toml (e.g. a facility's own models)
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # cvdm_cli/: weights.toml and models/
PACKAGED_REGISTRY = PACKAGE_DIR / "weights.toml"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256_RE = verify.SHA256_RE
_REPO_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")

_REQUIRED = ("description", "scale", "structures", "pixel_size_nm", "license", "sha256")
_SOURCES = ("package", "hub")
_OPTIONAL = ("default",)
_HUB_FIELDS = ("repo_id", "filename", "revision")
# Keys that look like an attempt at another kind of source: named in the error.
_OTHER_SOURCE_KINDS = (
    "url",
    "http",
    "https",
    "s3",
    "gcs",
    "file",
    "path",
    "local",
    "source",
    "zenodo",
)

SourceKind = Literal["package", "hub", "local", "hf"]


# --- registry entries -----------------------------------------------------------------


@dataclass(frozen=True)
class PackageSource:
    """A weights file shipped inside the package, relative to the weights.toml folder."""

    path: str
    base_dir: Path

    @property
    def file(self) -> Path:
        return self.base_dir / PurePosixPath(self.path)


@dataclass(frozen=True)
class HubSource:
    """A weights file on the Hugging Face hub, pinned to a commit."""

    repo_id: str
    filename: str
    revision: str  # full 40-hex commit

    @property
    def spec(self) -> str:
        return f"hf://{self.repo_id}/{self.filename}@{self.revision}"


@dataclass(frozen=True)
class ModelEntry:
    """One table of weights.toml."""

    name: str
    description: str
    scale: int
    structures: tuple[str, ...]
    pixel_size_nm: tuple[float, float]  # widefield input pixel size range, nm
    license: str
    sha256: str
    source: PackageSource | HubSource
    default: bool = False

    @property
    def kind(self) -> Literal["package", "hub"]:
        return "package" if isinstance(self.source, PackageSource) else "hub"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (used by ``cvdm models list --json`` and ``info``)."""
        out: dict[str, Any] = {
            "name": self.name,
            "default": self.default,
            "source": self.kind,
            "description": self.description,
            "scale": self.scale,
            "structures": list(self.structures),
            "pixel_size_nm": list(self.pixel_size_nm),
            "license": self.license,
            "sha256": self.sha256,
        }
        if isinstance(self.source, PackageSource):
            out["package"] = self.source.path
        else:
            out["repo_id"] = self.source.repo_id
            out["filename"] = self.source.filename
            out["revision"] = self.source.revision
        return out


@dataclass(frozen=True)
class Registry:
    """The validated contents of a weights.toml, in file order."""

    models: dict[str, ModelEntry]
    path: Path | None = None
    default_name: str = field(default="")

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)

    def __contains__(self, name: object) -> bool:
        return name in self.models

    @property
    def names(self) -> list[str]:
        return list(self.models)

    @property
    def default(self) -> ModelEntry:
        return self.models[self.default_name]

    def get(self, name: str) -> ModelEntry:
        """The entry called ``name``; :class:`UnknownModelError` listing the known names."""
        try:
            return self.models[name]
        except KeyError:
            raise errors.UnknownModelError(
                "unknown model",
                path=name,
                hint=f"known models: {', '.join(self.names)}; or pass a .safetensors file"
                " or hf://owner/repo/file.safetensors@revision (see `cvdm models list`)",
            ) from None


# --- loading and validation -----------------------------------------------------------


def default_registry_path() -> Path:
    """``$CVDM_REGISTRY`` if set, else the weights.toml shipped in the package."""
    env = os.environ.get(REGISTRY_ENV)
    return Path(env).expanduser() if env else PACKAGED_REGISTRY


def load_registry(path: str | os.PathLike[str] | None = None) -> Registry:
    """Read and validate a weights.toml (default: :func:`default_registry_path`).

    ``package`` paths are relative to the folder of the (symlink-resolved) file.
    Raises :class:`errors.RegistryError` naming the model and the field.
    """
    registry_path = Path(path) if path is not None else default_registry_path()
    try:
        text = registry_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise errors.RegistryError(
            "model registry not found",
            path=registry_path,
            hint=f"reinstall cvdm-cli, or unset {REGISTRY_ENV}"
            if path is None
            else "check the path",
        ) from None
    except OSError as exc:
        raise errors.RegistryError(
            f"cannot read the model registry ({exc.strerror})", path=registry_path
        ) from None
    return parse_registry(text, path=registry_path, base_dir=registry_path.resolve().parent)


def parse_registry(
    text: str, *, path: str | os.PathLike[str] | None = None, base_dir: Path | None = None
) -> Registry:
    """Validate registry TOML ``text``; ``base_dir`` anchors ``package`` paths."""
    where = Path(path) if path is not None else None
    label = str(where) if where is not None else "<weights.toml>"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise errors.RegistryError(f"not valid TOML ({exc})", path=label) from None
    base = base_dir if base_dir is not None else PACKAGE_DIR

    models: dict[str, ModelEntry] = {}
    for name, table in data.items():
        models[name] = _parse_entry(name, table, base, label)
    if not models:
        raise errors.RegistryError("no models defined", path=label, hint="add a [name] table")

    defaults = [entry.name for entry in models.values() if entry.default]
    if not defaults:
        raise errors.RegistryError(
            "no model has `default = true`", path=label, hint="mark exactly one model default"
        )
    if len(defaults) > 1:
        raise errors.RegistryError(
            f"models {', '.join(repr(n) for n in defaults)}: field 'default' is true on"
            f" {len(defaults)} models",
            path=label,
            hint="mark exactly one model default",
        )
    return Registry(models=models, path=where, default_name=defaults[0])


def _bad(
    label: str, name: str, key: str, what: str, hint: str | None = None
) -> errors.RegistryError:
    return errors.RegistryError(
        f"model {name!r}, field {key!r}: {what}",
        path=label,
        hint=hint or "fix the registry entry",
    )


def _parse_entry(name: str, table: Any, base: Path, label: str) -> ModelEntry:
    if not isinstance(table, dict):
        raise errors.RegistryError(
            f"top-level key {name!r} is not a model table", path=label, hint=f"write [{name}]"
        )
    if not _NAME_RE.fullmatch(name) or weights_suffix(name) in (WEIGHTS_SUFFIX, *PICKLE_SUFFIXES):
        raise _bad(
            label, name, "name", "use letters, digits, '.', '_' or '-', no file suffix or '/'"
        )

    for key in table:
        if key in _OTHER_SOURCE_KINDS:
            raise _bad(label, name, key, f"unknown source kind {key!r}; use 'package' or 'hub'")
        if key not in (*_REQUIRED, *_SOURCES, *_OPTIONAL):
            known = ", ".join((*_REQUIRED, *_SOURCES, *_OPTIONAL))
            raise _bad(label, name, key, f"unknown field (known: {known})")
    for key in _REQUIRED:
        if key not in table:
            hint = f"write it with `python -m cvdm_cli.hub.registry update-sha {name}`"
            raise _bad(label, name, key, "missing", hint if key == "sha256" else None)

    description = _text(table, "description", name, label)
    licence = _text(table, "license", name, label)

    scale = table["scale"]
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise _bad(label, name, "scale", f"must be a positive integer, got {scale!r}")

    structures = table["structures"]
    if (
        not isinstance(structures, list)
        or not structures
        or not all(isinstance(s, str) and s.strip() for s in structures)
    ):
        raise _bad(label, name, "structures", "must be a non-empty list of names")

    pixel = table["pixel_size_nm"]
    if (
        not isinstance(pixel, list)
        or len(pixel) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pixel)
        or not 0 < pixel[0] <= pixel[1]
    ):
        raise _bad(label, name, "pixel_size_nm", f"must be [min, max] in nm, got {pixel!r}")

    sha = table["sha256"]
    if not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha):
        raise _bad(label, name, "sha256", f"must be 64 lowercase hex digits, got {sha!r}")

    default = table.get("default", False)
    if not isinstance(default, bool):
        raise _bad(label, name, "default", f"must be true or false, got {default!r}")

    present = [key for key in _SOURCES if key in table]
    if not present:
        raise _bad(label, name, "package/hub", "missing: give `package = ...` or a `hub` table")
    if len(present) > 1:
        raise _bad(label, name, "package/hub", "give either `package` or `hub`, not both")
    source: PackageSource | HubSource
    if present[0] == "package":
        rel = table["package"]
        if not isinstance(rel, str):
            raise _bad(label, name, "package", "must be a path string")
        _check_relative(rel, name, "package", label)
        source = PackageSource(path=rel, base_dir=base)
    else:
        source = _parse_hub(table["hub"], name, label)

    return ModelEntry(
        name=name,
        description=description,
        scale=scale,
        structures=tuple(s.strip() for s in structures),
        pixel_size_nm=(float(pixel[0]), float(pixel[1])),
        license=licence,
        sha256=sha,
        source=source,
        default=default,
    )


def _text(table: dict[str, Any], key: str, name: str, label: str) -> str:
    value = table[key]
    if not isinstance(value, str) or not value.strip():
        raise _bad(label, name, key, "must be a non-empty string")
    return value.strip()


def _parse_hub(hub: Any, name: str, label: str) -> HubSource:
    if not isinstance(hub, dict):
        raise _bad(label, name, "hub", "must be a table with repo_id, filename, revision")
    for key in hub:
        if key not in _HUB_FIELDS:
            raise _bad(
                label, name, f"hub.{key}", f"unknown field (known: {', '.join(_HUB_FIELDS)})"
            )
    for key in _HUB_FIELDS:
        if key not in hub:
            raise _bad(label, name, f"hub.{key}", "missing")
        if not isinstance(hub[key], str):
            raise _bad(label, name, f"hub.{key}", "must be a string")
    repo_id, filename, revision = hub["repo_id"], hub["filename"], hub["revision"]
    if not _REPO_ID_RE.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id:
        raise _bad(label, name, "hub.repo_id", f"must look like 'owner/name', got {repo_id!r}")
    _check_relative(filename, name, "hub.filename", label)
    if not COMMIT_RE.fullmatch(revision):
        what = (
            "a branch or tag name"
            if re.fullmatch(r"[0-9a-fA-F]{5,39}", revision) is None
            else "an abbreviated or upper-case commit"
        )
        raise _bad(
            label,
            name,
            "hub.revision",
            f"{revision!r} is {what}; pin the full 40-hex commit id (it never moves)",
        )
    return HubSource(repo_id=repo_id, filename=filename, revision=revision)


def _check_relative(rel: str, name: str, key: str, label: str) -> None:
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or ".." in pure.parts or "\\" in rel:
        raise _bad(label, name, key, f"must be a relative path inside the source, got {rel!r}")
    problem = weights_format_problem(rel)
    if problem is not None:
        raise _bad(label, name, key, f"{rel!r}: {problem}")


# --- resolution -------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load with ``cvdm_cli.io.weights.load_weights(resolved.path)``.

    Attributes:
        name: registry name, or the file stem (local) / ``hf://`` spec (hub).
        path: the local .safetensors file (inside the HF cache for hub models).
        source: "package" | "hub" (registry entries), "local" (a path), "hf" (hf:// spec).
        revision: the hub commit the file came from (resolved when the spec did not pin
            one), else None.
        sha256: the file's sha256 (the expected one when ``verified``).
        verified: True when the file's sha256 matched the registry (or, for hf:// LFS
            files, the hub's declared sha256); False when there was nothing to check.
        downloaded: True when this call fetched the file from the hub.
        entry: the registry entry, when resolved by name.
    """

    name: str
    path: Path
    source: SourceKind
    revision: str | None = None
    sha256: str | None = None
    verified: bool = False
    downloaded: bool = False
    repo_id: str | None = None
    filename: str | None = None
    entry: ModelEntry | None = None

    @property
    def pinned_spec(self) -> str | None:
        """``hf://owner/repo/file@<commit>`` for hub files, to pin in scripts."""
        if self.repo_id is None or self.filename is None or self.revision is None:
            return None
        return f"hf://{self.repo_id}/{self.filename}@{self.revision}"


def parse_hf_spec(spec: str) -> HubFile:
    """``hf://owner/repo/path/file.safetensors[@revision]`` -> :class:`hub.HubFile`."""
    from cvdm_cli.hub.hf import HubFile

    usage = "expected hf://owner/repo/path/file.safetensors[@revision]"
    body = spec[len("hf://") :]
    revision: str | None = None
    if "@" in body:
        head, _, tail = body.rpartition("@")
        if "/" not in tail:  # after the last '@' comes the revision (a path has a '/')
            body, revision = head, tail or None
    parts = body.split("/")
    if len(parts) < 3 or any(not p for p in parts):
        raise errors.ConfigError("malformed hf:// model spec", path=spec, hint=usage)
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    if not _REPO_ID_RE.fullmatch(repo_id) or ".." in parts:
        raise errors.ConfigError("malformed hf:// model spec", path=spec, hint=usage)
    _check_format(filename, spec)
    return HubFile(repo_id=repo_id, filename=filename, revision=revision)


def _check_format(filename: str, label: str) -> None:
    refuse_unsafe_format(filename, path=label)


def _looks_like_path(spec: str) -> bool:
    """A spec that cannot be a registry name (names have no '/' and no file suffix)."""
    return (
        "/" in spec
        or os.sep in spec
        or weights_suffix(spec) in (WEIGHTS_SUFFIX, *PICKLE_SUFFIXES)
        or spec.startswith(("~", "."))
    )


def resolve_model(
    spec: str | None = None,
    *,
    registry: Registry | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    progress: ProgressCallback | None = None,
    force: bool = False,
) -> ResolvedModel:
    """Turn a ``--model`` value into a verified local .safetensors file.

    Args:
        spec: a registry name, a path to a .safetensors file, or
            ``hf://owner/repo/path/file.safetensors[@revision]``; None -> the default entry.
        registry: the registry to use (default: :func:`load_registry`).
        cache_dir: hub cache folder (default: huggingface_hub's, from HF_HUB_CACHE/HF_HOME).
        offline: never contact the hub (default: huggingface_hub's HF_HUB_OFFLINE).
        progress: called as ``progress(done_bytes, total_bytes)`` while downloading.
        force: download again even when cached (``cvdm models pull --force``).

    Raises UnknownModelError, UnsafeWeightsFormatError, ChecksumMismatchError, OfflineError
    (cvdm_cli.errors); never a raw network exception.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    if spec is not None and spec.startswith("hf://"):
        return _resolve_hf(spec, cache, offline, progress, force)
    if spec is not None and _looks_like_path(spec):
        return _resolve_local(spec)
    reg = registry if registry is not None else load_registry()
    if spec is not None and spec not in reg and Path(spec).is_file():
        return _resolve_local(spec)  # a file in the working folder named without a suffix
    entry = reg.default if spec is None else reg.get(spec)
    return resolve_entry(entry, cache_dir=cache, offline=offline, progress=progress, force=force)


def resolve_entry(
    entry: ModelEntry,
    *,
    cache_dir: Path | None = None,
    offline: bool | None = None,
    progress: ProgressCallback | None = None,
    force: bool = False,
) -> ResolvedModel:
    """Resolve a registry entry (see :func:`resolve_model`)."""
    if isinstance(entry.source, PackageSource):  # no huggingface_hub import on this path
        path = entry.source.file
        if not path.is_file():
            raise errors.WeightsError(
                f"the packaged weights of model {entry.name!r} are missing",
                path=path,
                hint="reinstall cvdm-cli (the file ships inside the package)",
            )
        verify.check_sha256(
            path,
            entry.sha256,
            label=entry.name,
            hint="the packaged file was modified or the install is broken: reinstall cvdm-cli",
        )
        return ResolvedModel(
            name=entry.name,
            path=path,
            source="package",
            sha256=entry.sha256,
            verified=True,
            entry=entry,
        )

    from cvdm_cli.hub import hf as hub

    src = entry.source
    file = hub.HubFile(repo_id=src.repo_id, filename=src.filename, revision=src.revision)
    fetched = hub.fetch(
        file,
        label=entry.name,
        cache_dir=cache_dir,
        offline=offline,
        force=force,
        expected_sha256=entry.sha256,
        progress=progress,
    )
    return ResolvedModel(
        name=entry.name,
        path=fetched.path,
        source="hub",
        revision=fetched.commit,
        sha256=entry.sha256,
        verified=True,
        downloaded=fetched.downloaded,
        repo_id=src.repo_id,
        filename=src.filename,
        entry=entry,
    )


def _resolve_hf(
    spec: str,
    cache_dir: Path | None,
    offline: bool | None,
    progress: ProgressCallback | None,
    force: bool,
) -> ResolvedModel:
    from cvdm_cli.hub import hf as hub

    file = parse_hf_spec(spec)
    fetched = hub.fetch(
        file, label=spec, cache_dir=cache_dir, offline=offline, force=force, progress=progress
    )
    return ResolvedModel(
        name=spec,
        path=fetched.path,
        source="hf",
        revision=fetched.commit,
        sha256=fetched.sha256,
        verified=fetched.verified,
        downloaded=fetched.downloaded,
        repo_id=file.repo_id,
        filename=file.filename,
    )


def _resolve_local(spec: str) -> ResolvedModel:
    path = Path(spec).expanduser()
    _check_format(path.name, spec)
    if not path.is_file():
        raise errors.UnknownModelError(
            "unknown model / file: no such .safetensors file",
            path=spec,
            hint="check the path, or use a registry name (see `cvdm models list`)",
        )
    path = path.resolve()
    # hashed for provenance only (nothing to check it against); no marker is written for
    # files outside the registry and the hub cache
    sha = verify.sha256_cached(path, mark=False)
    return ResolvedModel(name=path.stem, path=path, source="local", sha256=sha, verified=False)


# --- cache status and re-verification (cvdm models list / verify) -------------------------


@dataclass(frozen=True)
class ModelStatus:
    """Where a registry model's file is, without network and without hashing.

    ``state``: "verified" (a marker says the file hashes to the registry's sha256 and it has
    not changed since), "unverified" (present, not hashed yet or changed since),
    "mismatch" (a marker says it hashes to something else), "not cached" (hub model not
    downloaded) or "missing" (packaged file absent: a broken install).
    """

    entry: ModelEntry
    state: Literal["verified", "unverified", "mismatch", "not cached", "missing"]
    path: Path | None = None
    size: int | None = None
    revision: str | None = None

    @property
    def cached(self) -> bool:
        return self.path is not None

    @property
    def verified(self) -> bool:
        return self.state == "verified"

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.entry.to_dict(),
            "path": str(self.path) if self.path is not None else None,
            "size": self.size,
            "cached": self.cached,
            "verified": self.verified,
            "state": self.state,
        }


def _local_file(entry: ModelEntry, cache_dir: Path | None) -> Path | None:
    if isinstance(entry.source, PackageSource):
        return entry.source.file if entry.source.file.is_file() else None
    from cvdm_cli.hub import hf as hub

    src = entry.source
    return hub.cached_path(hub.HubFile(src.repo_id, src.filename, src.revision), cache_dir)


def model_status(
    entry: ModelEntry, *, cache_dir: str | os.PathLike[str] | None = None
) -> ModelStatus:
    """The :class:`ModelStatus` of a registry entry (no network, no hashing)."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    path = _local_file(entry, cache)
    if path is None:
        return ModelStatus(entry, "missing" if entry.kind == "package" else "not cached")
    marked = verify.marker_sha256(path)
    state = "unverified" if marked is None else "verified" if marked == entry.sha256 else "mismatch"
    revision = None
    if entry.kind == "hub":  # a packaged file is in no hub snapshot
        from cvdm_cli.hub import hf as hub

        revision = hub.commit_of(path)
    return ModelStatus(entry, state, path, path.stat().st_size, revision)


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of re-hashing one model (``cvdm models verify``)."""

    entry: ModelEntry
    state: Literal["ok", "mismatch", "not cached", "missing"]
    path: Path | None = None
    actual: str | None = None

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def verify_entry(
    entry: ModelEntry, *, cache_dir: str | os.PathLike[str] | None = None
) -> VerifyResult:
    """Re-hash a model's local file (ignoring markers) and compare with the registry."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    path = _local_file(entry, cache)
    if path is None:
        return VerifyResult(entry, "missing" if entry.kind == "package" else "not cached")
    actual = verify.sha256_file(path)
    verify.write_marker(path, actual)
    return VerifyResult(entry, "ok" if actual == entry.sha256 else "mismatch", path, actual)


# --- maintainer commands: python -m cvdm_cli.hub.registry ... -------------------------------


def write_sha256(name: str, sha256: str, registry_path: Path) -> Path:
    """Set ``sha256`` of table ``[name]`` in weights.toml, keeping its comments and layout.

    Writes atomically to the symlink-resolved file; validates the result first.
    Returns the file written.
    """
    if not _SHA256_RE.fullmatch(sha256):
        raise ValueError(f"not a sha256: {sha256!r}")
    target = registry_path.resolve()
    lines = target.read_text(encoding="utf-8").splitlines(keepends=True)
    header = re.compile(r"\s*\[\s*(?:\"(?P<q>[^\"]+)\"|(?P<b>[^\]\s]+))\s*\]\s*(#.*)?$")
    start = next(
        (
            i
            for i, line in enumerate(lines)
            if (m := header.match(line)) and (m.group("q") or m.group("b")) == name
        ),
        None,
    )
    if start is None:
        raise errors.UnknownModelError(f"no [{name}] table", path=target)
    # The table's own keys end at the next header (a sub-table like [name.hub] included).
    headers_after = (i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("["))
    end = next(headers_after, len(lines))
    sha_line = re.compile(r"(\s*sha256\s*=\s*)\"[^\"]*\"(.*)$", re.DOTALL)
    new_line = f'sha256 = "{sha256}"\n'
    for i in range(start + 1, end):
        if m := sha_line.match(lines[i]):
            lines[i] = f'{m.group(1)}"{sha256}"{m.group(2)}'
            break
    else:  # no sha256 line yet: add it after the last key of the table
        insert = end  # before the blank lines and comments that lead into the next table
        while insert > start + 1 and lines[insert - 1].strip()[:1] in ("", "#"):
            insert -= 1
        lines.insert(insert, new_line)
    text = "".join(lines)
    parse_registry(text, path=target, base_dir=target.parent)  # never write an invalid file
    return write_text_atomic(target, text)


def main(argv: list[str] | None = None) -> int:
    """``python -m cvdm_cli.hub.registry {check,update-sha,sha256}`` (maintainers)."""
    parser = argparse.ArgumentParser(prog="python -m cvdm_cli.hub.registry", description=__doc__)
    parser.add_argument(
        "--registry", type=Path, default=None, help="weights.toml (default: the packaged one)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="validate weights.toml and print the model names")
    upd = sub.add_parser("update-sha", help="hash a model's file and write its sha256")
    upd.add_argument("name")
    upd.add_argument("--file", type=Path, help="the weights file (default: a package entry's)")
    hsh = sub.add_parser("sha256", help="print the sha256 of a file")
    hsh.add_argument("file", type=Path)
    args = parser.parse_args(argv)

    path = args.registry if args.registry is not None else default_registry_path()
    try:
        if args.command == "check":
            reg = load_registry(path)
            for entry in reg:
                mark = " (default)" if entry.default else ""
                print(f"{entry.name}{mark}: {entry.kind}")
            return 0
        if args.command == "sha256":
            print(verify.sha256_file(args.file))
            return 0
        file = args.file
        if file is None:
            file = _package_file_of(args.name, path)
        _check_format(file.name, str(file))
        digest = verify.sha256_file(file)
        written = write_sha256(args.name, digest, path)
        print(f"{args.name}: sha256 = {digest} ({file}) -> {written}")
        return 0
    except (errors.CvdmError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _package_file_of(name: str, registry_path: Path) -> Path:
    """The package file named by ``[name]`` (read without validating: its sha may be absent)."""
    target = registry_path.resolve()
    table = tomllib.loads(target.read_text(encoding="utf-8")).get(name)
    if not isinstance(table, dict) or not isinstance(table.get("package"), str):
        raise errors.UnknownModelError(
            "no package entry of that name; pass --file for hub entries", path=name
        )
    _check_relative(table["package"], name, "package", str(target))
    return target.parent / PurePosixPath(table["package"])


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
