"""The package's shape holds: imports point down the layers, one door per outside library.

docs/architecture.md states the rules; this test reads every module's imports (also those
inside functions) with the ast module, so a new import that breaks them fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cvdm_cli"

# top (may import everything below) to bottom
LAYERS = ["cli", "evaluation", "training", "run", "hub", "io", "sampling", "core", "errors"]
# outside library -> the only modules (paths relative to cvdm_cli/) that may import it
DOORS = {
    "tifffile": ("io/",),
    "safetensors": ("io/weights.py",),
    "huggingface_hub": ("hub/hf.py",),
    # our training simulator uses its PSFs; the held-out G1 pipeline uses it end to end
    "microsim": ("training/simulation.py", "evaluation/heldout.py"),
    "matplotlib": ("evaluation/figures.py",),
    "dask": ("run/cluster.py",),
    "distributed": ("run/cluster.py",),
    "typer": ("cli/",),
    "rich": ("cli/",),
}
# modules outside the layers: the package root, its version, the old-path aliases
UNLAYERED = {"__init__.py", "__main__.py", "_version.py", "_moved.py"}


def _layer(rel: str) -> str:
    return rel.split("/")[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "cvdm_cli":  # from cvdm_cli import errors, ...
                found += [(node.lineno, f"cvdm_cli.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def _modules() -> list[tuple[str, Path]]:
    return [
        (p.relative_to(PACKAGE).as_posix(), p)
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.relative_to(PACKAGE).as_posix() not in UNLAYERED
    ]


def test_imports_point_down_the_layers():
    wrong = []
    for rel, path in _modules():
        mine = LAYERS.index(_layer(rel))
        for line, name in _imports(path):
            parts = name.split(".")
            if parts[0] != "cvdm_cli" or len(parts) < 2 or parts[1] in ("_version", "__version__"):
                continue
            if parts[1] not in LAYERS:  # the package's public API (cvdm_cli.__init__)
                wrong.append(f"{rel}:{line} imports {name}, not a layer")
                continue
            if LAYERS.index(parts[1]) < mine:
                wrong.append(f"{rel}:{line} imports {name} from a layer above")
    assert not wrong, "\n".join(wrong)


def test_one_door_per_outside_library():
    wrong = []
    for rel, path in _modules():
        for line, name in _imports(path):
            doors = DOORS.get(name.split(".")[0])
            if doors and not any(
                rel == d or (d.endswith("/") and rel.startswith(d)) for d in doors
            ):
                wrong.append(f"{rel}:{line} imports {name} (only {', '.join(doors)} may)")
    assert not wrong, "\n".join(wrong)


def test_the_rules_see_real_imports():
    """The scanner finds imports inside functions too (a test that cannot fail is no test)."""
    names = {n for _, n in _imports(PACKAGE / "run" / "cluster.py")}
    assert {"distributed", "cvdm_cli.core.devices"} <= names
    assert "huggingface_hub" in {n.split(".")[0] for _, n in _imports(PACKAGE / "hub" / "hf.py")}
