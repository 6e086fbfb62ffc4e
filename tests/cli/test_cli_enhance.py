"""`cvdm enhance` and `cvdm uncertainty` end to end: files, shapes, units, skipping, JSON,
exit codes, Ctrl-C, seeds, and a --help that does not import torch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import cvdm, default_sigint, json_lines
from scipy.ndimage import gaussian_filter

from cvdm_cli.core.devices import pick_precision
from cvdm_cli.core.variance import DEFAULT_VARIANCE_SMOOTHING

FAST = ["--samples", "2", "--steps", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CVDM_DEBUG": ""}


pytestmark = pytest.mark.usefixtures("one_thread", "no_debug")


def write(path: Path, shape: tuple[int, ...], axes: str, *, pixel_um=0.2, seed=0) -> Path:
    data = np.random.default_rng(seed).integers(100, 4000, size=shape).astype(np.uint16)
    kw = {"resolution": (1 / pixel_um, 1 / pixel_um)} if pixel_um else {}
    meta = {"axes": axes, **({"unit": "um", "spacing": 0.5} if pixel_um else {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data, imagej=True, metadata=meta, **kw)
    return path


def read(path: Path) -> tuple[np.ndarray, str, float | None, dict]:
    with tifffile.TiffFile(path) as tif:
        arr = tif.asarray()
        meta = tif.imagej_metadata or {}
        x_res = tif.pages[0].tags["XResolution"].value
        px = x_res[1] / x_res[0] if x_res[0] else None
        return arr, tif.series[0].axes, px, meta


# --- shapes, axes, units ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "axes"),
    [((24, 20), "YX"), ((3, 24, 20), "ZYX"), ((2, 2, 2, 12, 10), "TZCYX")],
)
def test_enhance_shapes_axes_pixel_size_and_json(tmp_path, tiny_weights, shape, axes):
    src = write(tmp_path / "cell.tif", shape, axes)
    r = cvdm("enhance", src, "--model", tiny_weights, *FAST, "--json")
    assert r.code == 0, r.err
    objs = json_lines(r.out)
    assert [o["type"] for o in objs] == ["file", "summary"]
    res, summary = objs
    out_shape = (*shape[:-2], 2 * shape[-2], 2 * shape[-1])
    assert res["status"] == "done" and res["error"] is None
    assert res["shape"] == list(shape) and res["output_shape"] == list(out_shape)
    assert res["planes"] == int(np.prod(shape[:-2]))
    assert set(res["outputs"]) == {"mean", "var"}
    for kind, name in (("mean", "cell_cvdm.tif"), ("var", "cell_cvdm_var.tif")):
        path = tmp_path / name
        assert res["outputs"][kind] == str(path)
        arr, file_axes, px, meta = read(path)
        assert arr.shape == out_shape and arr.dtype == np.float32
        assert file_axes == axes
        assert px == pytest.approx(0.1, rel=1e-4)  # 0.2 µm / 2
        assert meta.get("unit") in ("micron", "µm")
        if "Z" in axes:
            assert meta.get("spacing") == pytest.approx(0.5)  # Z is not resampled
        assert np.isfinite(arr).all()
    var = tifffile.imread(tmp_path / "cell_cvdm_var.tif")
    assert (var >= 0).all() and var.max() > 0
    assert summary["done"] == 1 and summary["failed"] == 0 and summary["device"] == "cpu"
    assert summary["precision"] == pick_precision("auto", torch.device("cpu"))
    assert summary["input_megapixels"] == pytest.approx(np.prod(shape) / 1e6)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cell.tif",
        "cell_cvdm.tif",
        "cell_cvdm_var.tif",
    ]


def test_mean_is_in_input_intensity_units(tmp_path, tiny_weights):
    src = write(tmp_path / "a.tif", (24, 20), "YX")
    assert cvdm("enhance", src, "-m", tiny_weights, *FAST, "--std", "-q").code == 0
    data = tifffile.imread(src).astype(np.float64)
    mean = tifffile.imread(tmp_path / "a_cvdm.tif")
    std = tifffile.imread(tmp_path / "a_cvdm_std.tif")
    lo, hi = np.percentile(data, [1, 99.8])
    # the untrained tiny model's residual is clipped to +-4 normalised units
    assert mean.min() >= lo - 5 * (hi - lo) / 2 and mean.max() <= hi + 5 * (hi - lo) / 2
    assert abs(np.median(mean) - np.median(data)) < 4 * (hi - lo) / 2
    assert 0 < std.max() <= 4 * (hi - lo)


def test_extra_outputs(tmp_path, tiny_weights):
    src = write(tmp_path / "s.tif", (2, 12, 10), "ZYX")
    r = cvdm(
        "enhance",
        src,
        "-m",
        tiny_weights,
        *FAST,
        "--std",
        "--difficulty",
        "--save-samples",
        "--samples",
        "3",
    )
    assert r.code == 0, r.err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "s.tif",
        "s_cvdm.tif",
        "s_cvdm_difficulty.tif",
        "s_cvdm_samples.tif",
        "s_cvdm_std.tif",
    ]
    samples, axes, _px, _ = read(tmp_path / "s_cvdm_samples.tif")
    assert samples.shape == (3, 2, 24, 20) and axes == "TZYX"  # samples on the T axis
    mean = tifffile.imread(tmp_path / "s_cvdm.tif")
    std = tifffile.imread(tmp_path / "s_cvdm_std.tif")
    np.testing.assert_allclose(samples.mean(axis=0), mean, rtol=1e-4, atol=1e-2)
    # the std written: the square root of the samples' variance pooled per plane (Y, X)
    var = samples.astype(np.float64).var(axis=0, ddof=1)
    pooled = gaussian_filter(var, (0, DEFAULT_VARIANCE_SMOOTHING, DEFAULT_VARIANCE_SMOOTHING))
    np.testing.assert_allclose(np.sqrt(pooled), std, rtol=1e-3, atol=1e-2)
    lam = tifffile.imread(tmp_path / "s_cvdm_difficulty.tif")
    assert lam.shape == (2, 24, 20) and (lam >= 0).all()  # lambda = softplus(...) >= 0


def test_outputs_record_how_they_were_made(tmp_path, tiny_weights):
    import hashlib

    src = write(tmp_path / "s.tif", (2, 12, 10), "ZYX")
    args = ("--std", "--difficulty", "--save-samples", "--seed", "5", "--passes", "1,1")
    r = cvdm("enhance", src, "-m", tiny_weights, *FAST, *args, "-q")
    assert r.code == 0, r.err
    sha = hashlib.sha256(Path(tiny_weights).read_bytes()).hexdigest()
    for name, what in (
        ("s_cvdm.tif", "reconstruction"),
        ("s_cvdm_std.tif", "standard deviation"),
        ("s_cvdm_difficulty.tif", "lambda"),
        ("s_cvdm_samples.tif", "the samples"),
    ):
        record = json.loads(read(tmp_path / name)[3]["Info"])
        assert record["software"].startswith("cvdm ") and what in record["output"]
        assert record["input"] == "s.tif"
        assert record["model"] == {"name": "tiny", "sha256": sha}
        sampler = record["sampler"]
        assert (sampler["name"], sampler["samples"], sampler["steps"]) == ("fast", 2, 2)
        assert (sampler["passes"], sampler["seed"], sampler["eta"]) == ("1,1", 5, 1.0)
        assert sampler["tta"] is True and sampler["antithetic"] is False
        smoothing = record.get("variance_smoothing_px")
        assert smoothing == (DEFAULT_VARIANCE_SMOOTHING if "std" in name else None)


# --- folders, skipping, overwrite -------------------------------------------------------


def test_folder_recursive_output_layout_skip_and_overwrite(tmp_path, tiny_weights):
    data = tmp_path / "data"
    write(data / "a.tif", (12, 10), "YX")
    write(data / "day1" / "b.tif", (12, 10), "YX")
    write(data / "day1" / "x" / "c.tiff", (12, 10), "YX")
    out = tmp_path / "results"
    r = cvdm("enhance", data, "-r", "-o", out, "-m", tiny_weights, *FAST, "--json")
    assert r.code == 0, r.err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [
        "a_cvdm.tif",
        "a_cvdm_var.tif",
        "day1/b_cvdm.tif",
        "day1/b_cvdm_var.tif",
        "day1/x/c_cvdm.tif",
        "day1/x/c_cvdm_var.tif",
    ]
    assert not list(data.rglob("*_cvdm*"))  # nothing next to the inputs
    files = [o for o in json_lines(r.out) if o["type"] == "file"]
    assert {Path(o["outputs"]["mean"]).relative_to(out).as_posix() for o in files} == {
        "a_cvdm.tif",
        "day1/b_cvdm.tif",
        "day1/x/c_cvdm.tif",
    }
    without_r = cvdm("enhance", data, "-o", out, "-m", tiny_weights, *FAST, "--json")
    assert [o["input"] for o in json_lines(without_r.out)[:-1]] == [str(data / "a.tif")]

    stamp = (out / "day1" / "b_cvdm.tif").stat().st_mtime_ns
    again = cvdm("enhance", data, "-r", "-o", out, "-m", tiny_weights, *FAST, "--json")
    assert again.code == 0
    objs = json_lines(again.out)
    assert [o["status"] for o in objs[:-1]] == ["skipped"] * 3
    assert objs[-1]["skipped"] == 3 and objs[-1]["done"] == 0
    assert (out / "day1" / "b_cvdm.tif").stat().st_mtime_ns == stamp
    plain = cvdm("enhance", data, "-r", "-o", out, "-m", tiny_weights, *FAST)
    assert "skipped" in plain.err and "--overwrite" in plain.err

    redo = cvdm(
        "enhance", data, "-r", "-o", out, "-m", tiny_weights, *FAST, "--overwrite", "--json"
    )
    assert redo.code == 0
    assert [o["status"] for o in json_lines(redo.out)[:-1]] == ["done"] * 3
    assert (out / "day1" / "b_cvdm.tif").stat().st_mtime_ns != stamp


def test_same_seed_same_files_other_seed_differs(tmp_path, tiny_weights):
    src = write(tmp_path / "in" / "a.tif", (2, 12, 10), "ZYX")
    outs = {}
    for name, seed in (("one", "3"), ("two", "3"), ("three", "4")):
        r = cvdm(
            "enhance",
            src,
            "-o",
            tmp_path / name,
            "-m",
            tiny_weights,
            *FAST,
            "--seed",
            seed,
            "--tile",
            "16",
            "--overlap",
            "4",
            "-q",
        )
        assert r.code == 0, r.err
        outs[name] = [
            tifffile.imread(tmp_path / name / f) for f in ("a_cvdm.tif", "a_cvdm_var.tif")
        ]
    for a, b in zip(outs["one"], outs["two"], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(outs["one"][0], outs["three"][0])
    # the file bytes match too (no timestamps in the metadata)
    assert (tmp_path / "one" / "a_cvdm.tif").read_bytes() == (
        tmp_path / "two" / "a_cvdm.tif"
    ).read_bytes()


def test_tta_flag_changes_the_draws_and_is_deterministic(tmp_path, tiny_weights):
    src = write(tmp_path / "in" / "a.tif", (12, 10), "YX")
    outs = {}
    for name, flag in (("tta", "--tta"), ("tta2", "--tta"), ("plain", "--no-tta")):
        r = cvdm("enhance", src, "-o", tmp_path / name, "-m", tiny_weights, *FAST, flag, "-q")
        assert r.code == 0, r.err
        outs[name] = tifffile.imread(tmp_path / name / "a_cvdm.tif")
        assert outs[name].shape == (24, 20)
    np.testing.assert_array_equal(outs["tta"], outs["tta2"])
    assert not np.array_equal(outs["tta"], outs["plain"])


def test_variance_smoothing_flag_pools_only_the_variance(tmp_path, tiny_weights):
    src = write(tmp_path / "in" / "a.tif", (16, 12), "YX")
    outs = {}
    for name, sigma in (("default", None), ("raw", "0"), ("wide", "3")):
        extra = [] if sigma is None else ["--variance-smoothing", sigma]
        r = cvdm("enhance", src, "-o", tmp_path / name, "-m", tiny_weights, *FAST, *extra, "--json")
        assert r.code == 0, r.err
        summary = json_lines(r.out)[-1]
        used = summary["settings"]["variance_smoothing"]
        assert used == (DEFAULT_VARIANCE_SMOOTHING if sigma is None else float(sigma))
        files = ("a_cvdm.tif", "a_cvdm_var.tif")
        outs[name] = [tifffile.imread(tmp_path / name / f) for f in files]
    mean_raw, var_raw = outs["raw"]
    for name, sigma in (("default", DEFAULT_VARIANCE_SMOOTHING), ("wide", 3.0)):
        mean, var = outs[name]
        np.testing.assert_array_equal(mean, mean_raw)  # same samples, same mean
        expect = gaussian_filter(var_raw.astype(np.float64), sigma, mode="reflect")
        np.testing.assert_allclose(var, expect, rtol=1e-4, atol=1e-6 * var_raw.max())
    # pooling evens the map out: less pixel-to-pixel scatter, wider sigma evens it more
    rough = [np.abs(np.diff(outs[n][1], axis=1)).mean() for n in ("raw", "default", "wide")]
    assert rough[0] > rough[1] > rough[2]


# --- uncertainty ----------------------------------------------------------------------


def test_uncertainty_writes_only_uncertainty_and_reports(tmp_path, tiny_weights):
    src = write(tmp_path / "u.tif", (2, 12, 10), "ZYX")
    r = cvdm("uncertainty", src, "-m", tiny_weights, *FAST, "--threshold", "100")
    assert r.code == 0, r.err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "u.tif",
        "u_cvdm_difficulty.tif",
        "u_cvdm_var.tif",
    ]
    std = np.sqrt(tifffile.imread(tmp_path / "u_cvdm_var.tif").astype(np.float64))
    line = r.out.strip()
    assert line.startswith(str(src)) and "std mean" in line
    assert f"{std.mean():.4g}" in line and f"{np.percentile(std, 99):.4g}" in line
    assert f"{100 * (std > 100).mean():.2f}% of pixels above 100" in line

    j = cvdm(
        "uncertainty",
        src,
        "-m",
        tiny_weights,
        *FAST,
        "--std",
        "--no-difficulty",
        "--threshold",
        "100",
        "--json",
    )
    res, summary = json_lines(j.out)
    assert set(res["outputs"]) == {"std"}
    std_file = tifffile.imread(res["outputs"]["std"])
    assert res["uncertainty"]["std_mean"] == pytest.approx(float(std_file.mean()), rel=1e-5)
    assert res["uncertainty"]["fraction_above"] == pytest.approx(float((std_file > 100).mean()))
    assert summary["done"] == 1


# --- dry run, quiet ---------------------------------------------------------------------


def test_dry_run_writes_nothing(tmp_path, tiny_weights):
    write(tmp_path / "a.tif", (3, 40, 36), "ZYX")
    before = sorted(tmp_path.iterdir())
    r = cvdm(
        "enhance",
        tmp_path,
        "-m",
        tiny_weights,
        *FAST,
        "--dry-run",
        "--tile",
        "32",
        "--overlap",
        "8",
        "-o",
        tmp_path / "never",
    )
    assert r.code == 0, r.err
    assert sorted(tmp_path.iterdir()) == before
    assert "3 plane(s), 9 tile(s)/plane" in r.out and "36x40" not in r.out
    j = cvdm("enhance", tmp_path, "-m", tiny_weights, *FAST, "--dry-run", "--json")
    res, summary = json_lines(j.out)
    assert res["status"] == "planned" and res["estimated_seconds"] > 0
    assert summary["dry_run"] is True and summary["planned"] == 1


def test_quiet_prints_nothing_on_success(tmp_path, tiny_weights):
    src = write(tmp_path / "a.tif", (12, 10), "YX")
    r = cvdm("enhance", src, "-m", tiny_weights, *FAST, "--quiet")
    assert r.code == 0 and r.out == "" and r.err == ""
    loud = cvdm("enhance", src, "-m", tiny_weights, *FAST, "--overwrite")
    precision = pick_precision("auto", torch.device("cpu"))
    assert "done" in loud.err and "Mpx/s" in loud.err and f"cpu ({precision})" in loud.err
    assert loud.out == ""


def test_threads_caps_torch_threads_and_rejects_zero(tmp_path, tiny_weights, monkeypatch):
    monkeypatch.delenv("CVDM_TORCH_THREADS", raising=False)
    src = write(tmp_path / "a.tif", (12, 10), "YX")
    torch.set_num_threads(2)
    try:
        r = cvdm("enhance", src, "-m", tiny_weights, *FAST, "--threads", "1", "--quiet")
        assert r.code == 0 and (tmp_path / "a_cvdm.tif").exists()
        assert torch.get_num_threads() == 1
        assert os.environ["CVDM_TORCH_THREADS"] == "1"  # Dask workers it starts inherit it
    finally:
        torch.set_num_threads(1)
    bad = cvdm("enhance", src, "-m", tiny_weights, *FAST, "--threads", "0", "--overwrite")
    assert bad.code == 2 and "--threads" in bad.err


# --- errors and exit codes --------------------------------------------------------------


def test_folder_with_a_corrupt_file_processes_the_others_and_exits_1(tmp_path, tiny_weights):
    write(tmp_path / "a.tif", (12, 10), "YX")
    write(tmp_path / "c.tif", (12, 10), "YX")
    (tmp_path / "b.tif").write_bytes(b"II*\x00" + b"\x00" * 3)  # a truncated TIFF header
    r = cvdm("enhance", tmp_path, "-m", tiny_weights, *FAST, "--json")
    assert r.code == 1
    objs = json_lines(r.out)
    assert [(Path(o["input"]).name, o["status"]) for o in objs[:-1]] == [
        ("a.tif", "done"),
        ("b.tif", "failed"),
        ("c.tif", "done"),
    ]
    failed = objs[1]
    assert "b.tif" in failed["error"] and "—" in failed["error"]
    assert objs[-1]["failed"] == 1 and objs[-1]["failures"][0]["input"] == str(tmp_path / "b.tif")
    assert (tmp_path / "c_cvdm.tif").exists() and not (tmp_path / "b_cvdm.tif").exists()
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "b.tif" in errors[0]
    assert "Traceback" not in r.err


@pytest.mark.parametrize(
    "args",
    [
        ["missing.tif"],  # no such input
        ["{src}", "--tile", "30"],  # not a multiple of the network's divisor
        ["{src}", "--overlap", "300"],  # overlap >= tile
        ["{src}", "--model", "no-such-model"],  # unknown registry name
        ["{src}", "--model", "weights.pt"],  # pickle formats are refused
        ["{src}", "--device", "cuda:7"] if not torch.cuda.is_available() else ["missing.tif"],
        ["{src}", "--sampler", "euler"],  # not a choice (click usage error)
        ["{src}", "--variance-smoothing", "-1"],  # below the minimum (click usage error)
        ["{empty}"],  # a folder without TIFFs
    ],
)
def test_usage_errors_exit_2_before_any_work(tmp_path, tiny_weights, args):
    src = write(tmp_path / "a.tif", (12, 10), "YX")
    (tmp_path / "empty").mkdir()
    argv = [a.format(src=src, empty=tmp_path / "empty") for a in args]
    if argv[0] == "missing.tif":
        argv[0] = str(tmp_path / "missing.tif")
    model = [] if "--model" in argv else ["--model", str(tiny_weights)]
    r = cvdm("enhance", *argv, *model, *FAST, "--json")
    assert r.code == 2, (r.out, r.err)
    assert r.out == ""
    assert not list(tmp_path.glob("*_cvdm*"))
    if "--sampler" not in argv and "--variance-smoothing" not in argv:
        line = r.err.strip().splitlines()[-1]
        assert line.startswith("error: ") and "Traceback" not in r.err


def test_output_folder_that_cannot_be_created_exits_2(tmp_path, tiny_weights):
    src = write(tmp_path / "a.tif", (12, 10), "YX")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = cvdm("enhance", src, "-o", blocker / "sub", "-m", tiny_weights, *FAST)
    assert r.code == 2 and "error:" in r.err and "-o" in r.err


def test_debug_shows_tracebacks_for_unexpected_errors(tmp_path, tiny_weights, monkeypatch):
    from cvdm_cli.run import plane as pipeline

    src = write(tmp_path / "a.tif", (12, 10), "YX")

    def boom(*a, **k):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(pipeline, "reconstruct_plane", boom)
    r = cvdm("enhance", src, "-m", tiny_weights, *FAST)
    assert r.code == 1 and "unexpected ZeroDivisionError: bug" in r.err
    assert "Traceback" not in r.err
    monkeypatch.setenv("CVDM_DEBUG", "1")
    r = cvdm("enhance", src, "-m", tiny_weights, *FAST)
    assert r.code == 1 and "Traceback" in r.err


# --- Ctrl-C -----------------------------------------------------------------------------


def _run_cli(args: list[str], **kw) -> subprocess.Popen:
    code = "from cvdm_cli.cli.app import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        preexec_fn=default_sigint,
        **kw,
    )


def test_sigint_leaves_no_partial_file_and_exits_130(tmp_path, tiny_weights):
    write(tmp_path / "a.tif", (12, 10), "YX")
    write(tmp_path / "b.tif", (200, 48, 48), "ZYX")  # a minute of work unless interrupted
    proc = _run_cli(
        [
            "enhance",
            str(tmp_path),
            "-m",
            str(tiny_weights),
            "--samples",
            "4",
            "--steps",
            "10",
            "--json",
        ]
    )
    try:
        first = json.loads(proc.stdout.readline())  # a.tif is done
        assert first["status"] == "done"
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".b_cvdm.tif.partial-*")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.5)  # well inside b's planes
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["a.tif", "a_cvdm.tif", "a_cvdm_var.tif", "b.tif"]  # no b output, no temp
    rest = json_lines(out)
    assert rest[0]["input"] == str(tmp_path / "b.tif") and rest[0]["status"] == "interrupted"
    assert rest[-1]["type"] == "summary" and rest[-1]["interrupted"] is True
    assert rest[-1]["done"] == 1
    assert "interrupted" in err and "Traceback" not in err


# --- help without torch -----------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [["--help"], ["--version"], ["enhance", "--help"], ["uncertainty", "--help"]]
)
def test_help_does_not_import_torch(args):
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "sys.argv = ['cvdm', *sys.argv[1:]]\n"
        "from cvdm_cli.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code or 0,"
        " round(time.perf_counter() - t, 3))\n"
    )
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=ENV, timeout=60
    )
    wall = time.perf_counter() - started
    marker, exit_code, _inner = done.stdout.strip().splitlines()[-1].split()
    assert marker == "NO-TORCH" and exit_code == "0"
    assert ("Usage" in done.stdout) or ("cvdm " in done.stdout)
    assert wall < 5  # typically 0.4-0.7 s here; importing torch alone takes seconds


def test_every_command_summary_is_one_line():
    """`cvdm --help` lists each command by its docstring's first paragraph, and the rich
    markup mode keeps that paragraph's line breaks: a wrapped summary breaks mid-sentence."""
    import typer

    from cvdm_cli.cli.app import app

    def summaries(group, path=()):
        for name, command in getattr(group, "commands", {}).items():
            yield (*path, name), (command.help or "").strip().split("\n\n")[0]
            yield from summaries(command, (*path, name))

    found = dict(summaries(typer.main.get_command(app)))
    assert {("enhance",), ("uncertainty",), ("train",), ("models", "pull")} <= set(found)
    wrapped = {" ".join(path): text for path, text in found.items() if "\n" in text or not text}
    assert not wrapped
