"""``cvdm models``: list, inspect, download, verify and locate models (weights.toml).

Data goes to stdout (tables, JSON, paths); progress bars and notes go to stderr, so
``$(cvdm models path NAME)`` and ``cvdm models list --json | jq`` work in scripts. The
registry and hub layers are imported inside the commands (``cvdm --help`` stays fast).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from cvdm_cli import errors
from cvdm_cli.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    report_error,
    run_guarded,
    stderr,
    stdout,
)
from cvdm_cli.cli.progress import progress_bar

if TYPE_CHECKING:  # pragma: no cover
    from cvdm_cli.hub.registry import ResolvedModel

models_app = typer.Typer(
    name="models",
    help="List, download, verify and locate models (the registry is weights.toml).",
    no_args_is_help=True,
)

CACHE_DIR_HELP = (
    "Hub cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)."
)


def _cache_dir_option() -> Path | None:
    return typer.Option(None, "--cache-dir", help=CACHE_DIR_HELP, file_okay=False)


def register(app: typer.Typer) -> None:
    """Mount ``cvdm models ...`` on the root app."""
    app.add_typer(models_app, name="models")


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


_STATE_STYLE = {
    "verified": "green",
    "ok": "green",
    "unverified": "yellow",
    "not cached": "dim",
    "mismatch": "bold red",
    "missing": "bold red",
}


# --- progress ---------------------------------------------------------------------------


@contextmanager
def download_progress(label: str) -> Iterator[Callable[[int, int | None], None]]:
    """A rich download bar on stderr, fed by ``callback(done_bytes, total_bytes)``."""
    progress = progress_bar("download")  # no bar (and no stray blank line) in logs
    task: list[int] = []

    def callback(done: int, total: int | None) -> None:
        if not task:
            task.append(progress.add_task(escape(label), total=total))
        progress.update(task[0], completed=done, total=total)

    with progress:
        yield callback


def _resolve(spec: str | None, *, cache_dir: Path | None, force: bool = False) -> ResolvedModel:
    from cvdm_cli.hub.registry import load_registry, resolve_model

    registry = None if spec is not None and spec.startswith("hf://") else load_registry()
    label = spec or (registry.default_name if registry is not None else "model")
    with download_progress(label) as callback:
        resolved = resolve_model(
            spec, registry=registry, cache_dir=cache_dir, progress=callback, force=force
        )
    if resolved.source == "hf" and resolved.pinned_spec and resolved.pinned_spec != spec:
        stderr.print(
            f"note: {escape(resolved.name)} resolved to commit {resolved.revision}; pin it with"
            f" --model {escape(resolved.pinned_spec)}"
        )
    return resolved


# --- commands ---------------------------------------------------------------------------


@models_app.command("list")
def list_models(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    cache_dir: Path | None = _cache_dir_option(),
) -> None:
    """List the registry's models: default mark, source, size, cached and verified state."""

    def body() -> None:
        from cvdm_cli.hub.registry import load_registry, model_status

        statuses = [model_status(entry, cache_dir=cache_dir) for entry in load_registry()]
        if as_json:
            typer.echo(json.dumps([s.to_dict() for s in statuses], indent=2))
            return
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("", "NAME", "SOURCE", "SIZE", "STATE", "DESCRIPTION"):
            table.add_column(column)
        for s in statuses:
            style = _STATE_STYLE.get(s.state, "")
            table.add_row(
                "*" if s.entry.default else "",
                escape(s.entry.name),
                s.entry.kind,
                _size(s.size),
                f"[{style}]{s.state}[/]",
                escape(s.entry.description),
            )
        stdout.print(table)
        stdout.print("[dim]* default model (used when --model is not given)[/]")

    run_guarded(body)


@models_app.command("info")
def info(
    name: str = typer.Argument(..., help="A registry model name (see `cvdm models list`)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    cache_dir: Path | None = _cache_dir_option(),
) -> None:
    """Show everything the registry knows about a model, and where its file is."""

    def body() -> None:
        from cvdm_cli.hub.registry import load_registry, model_status

        status = model_status(load_registry().get(name), cache_dir=cache_dir)
        data = status.to_dict()
        if as_json:
            typer.echo(json.dumps(data, indent=2))
            return
        entry = status.entry
        rows = [
            ("name", entry.name + ("  (default)" if entry.default else "")),
            ("description", entry.description),
            ("scale", f"{entry.scale}x"),
            ("structures", ", ".join(entry.structures)),
            ("input pixel size", f"{entry.pixel_size_nm[0]:g}-{entry.pixel_size_nm[1]:g} nm"),
            ("license", entry.license),
            ("source", entry.kind),
        ]
        if entry.kind == "hub":
            rows += [
                ("repo_id", data["repo_id"]),
                ("filename", data["filename"]),
                ("revision", data["revision"]),
            ]
        else:
            rows.append(("package file", data["package"]))
        rows += [
            ("sha256", entry.sha256),
            ("state", status.state),
            ("size", _size(status.size)),
            ("path", str(status.path) if status.path else "-"),
        ]
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            stdout.print(f"[bold]{key:<{width}}[/]  {escape(str(value))}")

    run_guarded(body)


@models_app.command("pull")
def pull(
    names: list[str] | None = typer.Argument(
        None, help="Registry names, or hf://owner/repo/file.safetensors\\[@revision]."
    ),
    all_models: bool = typer.Option(False, "--all", help="Pull every registry model."),
    force: bool = typer.Option(False, "--force", help="Download again even when cached."),
    cache_dir: Path | None = _cache_dir_option(),
) -> None:
    """Download models into the hub cache and verify their sha256 (then they work offline)."""

    def body() -> None:
        from cvdm_cli.hub.registry import load_registry

        specs = list(names or [])
        if all_models:
            specs += [n for n in load_registry().names if n not in specs]
        if not specs:
            raise errors.ConfigError(
                "nothing to pull", hint="name one or more models, or pass --all"
            )
        failures = 0
        for spec in specs:
            try:
                resolved = _resolve(spec, cache_dir=cache_dir, force=force)
            except errors.CvdmError as exc:
                if len(specs) == 1:
                    raise
                report_error(exc)
                failures += 1
                continue
            what = "downloaded" if resolved.downloaded else "already cached"
            check = "sha256 verified" if resolved.verified else "not verified (no known sha256)"
            stderr.print(
                f"[green]{escape(resolved.name)}[/]: {what}, {check}: {escape(str(resolved.path))}"
            )
        if failures:
            raise typer.Exit(EXIT_FAILED)

    run_guarded(body)


@models_app.command("verify")
def verify(
    names: list[str] | None = typer.Argument(None, help="Registry names (default: all)."),
    cache_dir: Path | None = _cache_dir_option(),
) -> None:
    """Re-hash local model files against weights.toml; exit 1 on any mismatch."""

    def body() -> None:
        from cvdm_cli.hub.registry import load_registry, verify_entry

        registry = load_registry()
        entries = [registry.get(n) for n in names] if names else list(registry)
        bad = 0
        for entry in entries:
            result = verify_entry(entry, cache_dir=cache_dir)
            style = _STATE_STYLE.get(result.state, "")
            line = f"[{style}]{result.state:<10}[/] {escape(entry.name)}"
            if result.path is not None:
                line += f"  {escape(str(result.path))}"
            stdout.print(line)
            if result.state == "mismatch":
                bad += 1
                stderr.print(
                    f"[bold red]error:[/] {escape(entry.name)}: sha256 mismatch: expected"
                    f" {entry.sha256}, got {result.actual} — re-download with"
                    f" `cvdm models pull {escape(entry.name)} --force`"
                )
            elif result.state == "missing" or (names and result.state == "not cached"):
                bad += 1
        raise typer.Exit(EXIT_FAILED if bad else EXIT_OK)

    run_guarded(body)


@models_app.command("path")
def path(
    name: str | None = typer.Argument(
        None, help="Registry name, .safetensors path or hf:// spec (default: the default model)."
    ),
    cache_dir: Path | None = _cache_dir_option(),
) -> None:
    """Print the local weights file of a model (downloading and verifying it if needed)."""

    def body() -> None:
        resolved = _resolve(name, cache_dir=cache_dir)
        typer.echo(str(resolved.path))

    run_guarded(body)
