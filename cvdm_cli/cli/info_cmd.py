"""``cvdm info``: versions, devices, cache folder and registry models (for bug reports).

Everything is read locally: no network, no hashing (``cvdm models verify`` re-hashes).
A broken registry or hub set-up is reported in the output instead of ending the command.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cvdm_cli import errors
from cvdm_cli.cli.common import run_guarded, stdout
from cvdm_cli.cli.options import CacheDirOpt

PACKAGES = ("numpy", "tifffile", "safetensors", "huggingface-hub", "typer", "rich")


def register(app: typer.Typer) -> None:
    """Mount ``cvdm info`` on the root app."""
    app.command("info")(info)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _models(cache_dir: Path | None) -> tuple[str | None, list[dict[str, Any]], str | None]:
    """(registry path, one dict per model, error line or None)."""
    from cvdm_cli.hub.registry import default_registry_path, load_registry, model_status

    path = str(default_registry_path())
    try:
        registry = load_registry()
        rows = []
        for entry in registry:
            status = model_status(entry, cache_dir=cache_dir)
            rows.append(
                {
                    "name": entry.name,
                    "default": entry.default,
                    "source": entry.kind,
                    "present": status.cached,
                    "verified": status.verified,
                    "state": status.state,
                    "path": str(status.path) if status.path else None,
                }
            )
        return path, rows, None
    except errors.CvdmError as exc:
        return path, [], exc.one_line()


def collect(cache_dir: Path | None = None) -> dict[str, Any]:
    """Everything ``cvdm info`` shows, as a JSON-ready dict."""
    from cvdm_cli import __version__
    from cvdm_cli.core.devices import list_devices, pick_device, pick_precision, torch_build

    auto = pick_device("auto")
    data: dict[str, Any] = {
        "cvdm": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **torch_build(),
        "packages": {name: _version(name) for name in PACKAGES},
        "devices": list_devices(),
        "auto_device": str(auto),
        "auto_precision": pick_precision("auto", auto),
    }
    try:
        from cvdm_cli.hub import hf as hub

        data["cache_dir"] = str(hub.cache_root(cache_dir))
        data["hub_endpoint"] = hub.endpoint()
        data["offline"] = hub.is_offline()
    except Exception as exc:  # a broken hub install is itself information
        data["cache_dir"] = str(cache_dir) if cache_dir else None
        data["hub_error"] = f"{type(exc).__name__}: {exc}"
    registry, models, problem = _models(cache_dir)
    data["registry"] = registry
    data["models"] = models
    data["registry_error"] = problem
    return data


def _print(data: dict[str, Any]) -> None:
    def row(key: str, value: Any) -> None:
        stdout.print(f"[bold]{key:<16}[/] {escape(str(value))}")

    row("cvdm", data["cvdm"])
    row("python", f"{data['python']} ({data['platform']})")
    cuda = data["cuda"] or "none (CPU build)"
    row("torch", f"{data['torch']}, CUDA {cuda}, cuDNN {data['cudnn'] or '-'}")
    row("packages", ", ".join(f"{k} {v or 'missing'}" for k, v in data["packages"].items()))
    for dev in data["devices"]:
        extra = {k: v for k, v in dev.items() if k not in ("device", "name")}
        shown = {k: {True: "yes", False: "no"}.get(v, v) for k, v in extra.items()}
        detail = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in shown.items())
        row(f"device {dev['device']}", f"{dev['name']}" + (f" ({detail})" if detail else ""))
    row("auto device", f"{data['auto_device']} ({data['auto_precision']})")
    row("cache folder", data.get("cache_dir") or "-")
    if "hub_error" in data:
        row("hub", f"[error] {data['hub_error']}")
    else:
        row("hub", f"{data['hub_endpoint']}" + (" (offline)" if data["offline"] else ""))
    row("registry", data["registry"])
    if data["registry_error"]:
        stdout.print(f"[bold red]registry error:[/] {escape(data['registry_error'])}")
    for m in data["models"]:
        mark = "*" if m["default"] else " "
        state = {"verified": "[green]verified[/]", "not cached": "[dim]not cached[/]"}.get(
            m["state"], escape(m["state"])
        )
        stdout.print(f"  {mark} {escape(m['name'])}  {m['source']}  {state}")
    if data["models"]:
        stdout.print("[dim]* default model; `cvdm models verify` re-hashes the files[/]")


def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Versions, devices, cache folder, and the registry's models (present, verified)."""

    def body() -> None:
        data = collect(cache_dir)
        if as_json:
            typer.echo(json.dumps(data, indent=2))
        else:
            _print(data)

    run_guarded(body)
