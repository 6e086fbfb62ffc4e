"""The enhance pipeline (cvdm_cli.run.pipeline): discovery, the per-plane unit of work, units,
outputs, skipping, out-of-memory retries, interruption and the dry run."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import sample_plane
from scipy.ndimage import gaussian_filter

from cvdm_cli import errors
from cvdm_cli.core.devices import activation_bytes_per_pixel, default_tile
from cvdm_cli.core.normalize import percentile_normalize
from cvdm_cli.core.variance import DEFAULT_VARIANCE_SMOOTHING
from cvdm_cli.io.tiff import open_tiff
from cvdm_cli.run import plane as run_plane
from cvdm_cli.run.batch import FileResult, Reporter, enhance_file, run_batch
from cvdm_cli.run.inputs import FileJob, discover_inputs
from cvdm_cli.run.models import get_model
from cvdm_cli.run.plane import check_tiling, process_plane
from cvdm_cli.run.settings import EnhanceSettings, ModelRef

FAST = EnhanceSettings(samples=2, steps=2, tile=256, overlap=32)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ref(tiny_weights) -> ModelRef:
    return ModelRef(path=str(tiny_weights), device="cpu", name="tiny")


def write_tiff(path: Path, data: np.ndarray, axes: str, pixel_um: float | None = 0.1) -> Path:
    kw = {}
    if pixel_um is not None:
        kw = {"resolution": (1 / pixel_um, 1 / pixel_um)}
    meta = {"axes": axes, **({"unit": "um"} if pixel_um else {})}
    tifffile.imwrite(path, data, imagej=True, metadata=meta, **kw)
    return path


def image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(100, 4000, size=shape).astype(np.uint16)


# --- discovery ---------------------------------------------------------------------------


def test_discover_files_folders_and_layout(tmp_path):
    root = tmp_path / "data"
    (root / "sub" / "deep").mkdir(parents=True)
    for rel in ("a.tif", "B.TIFF", "sub/c.tif", "sub/deep/d.tif", "notes.txt", ".hidden.tif"):
        (root / rel).write_bytes(b"x")
    (root / "a_cvdm.tif").write_bytes(b"x")  # an earlier output: never an input
    (root / "sub" / "c_cvdm_var.tif").write_bytes(b"x")
    single = tmp_path / "single.tif"
    single.write_bytes(b"x")

    flat = discover_inputs([root])
    assert [j.input.name for j in flat] == ["a.tif", "B.TIFF"]
    assert all(j.out_dir == root for j in flat)

    out = tmp_path / "out"
    deep = discover_inputs([root, single], recursive=True, output_dir=out)
    got = {j.input.relative_to(tmp_path).as_posix(): j.out_dir for j in deep}
    assert got == {
        "data/a.tif": out,
        "data/B.TIFF": out,
        "data/sub/c.tif": out / "sub",
        "data/sub/deep/d.tif": out / "sub" / "deep",
        "single.tif": out,
    }
    job = next(j for j in deep if j.input.name == "B.TIFF")
    assert job.output_path("mean") == out / "B_cvdm.tif"
    assert job.outputs(dataclasses.replace(FAST, spread="std", difficulty=True)) == {
        "mean": out / "B_cvdm.tif",
        "std": out / "B_cvdm_std.tif",
        "difficulty": out / "B_cvdm_difficulty.tif",
    }
    only_c = discover_inputs([root], recursive=True, globs=["c*"])
    assert [j.input.name for j in only_c] == ["c.tif"]


def test_discover_skips_the_output_folder_inside_the_input_folder(tmp_path):
    (tmp_path / "a.tif").write_bytes(b"x")
    out = tmp_path / "results"
    out.mkdir()
    (out / "old.tif").write_bytes(b"x")
    jobs = discover_inputs([tmp_path], recursive=True, output_dir=out)
    assert [j.input.name for j in jobs] == ["a.tif"]


def test_discover_errors(tmp_path):
    with pytest.raises(errors.InputNotFoundError, match=r"missing\.tif"):
        discover_inputs([tmp_path / "missing.tif"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.ConfigError, match="no input files"):
        discover_inputs([tmp_path / "empty"])
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "cell.tif").write_bytes(b"x")
    with pytest.raises(errors.ConfigError, match="both write cell_cvdm"):
        discover_inputs(
            [tmp_path / "x" / "cell.tif", tmp_path / "y" / "cell.tif"], output_dir=tmp_path / "o"
        )
    (tmp_path / "x" / "cell_cvdm.tif").write_bytes(b"x")
    with pytest.raises(errors.ConfigError, match="is itself an input"):
        discover_inputs([tmp_path / "x" / "cell.tif", tmp_path / "x" / "cell_cvdm.tif"])


def test_settings_validation():
    for bad in (
        {"samples": 0},
        {"steps": 0},
        {"sampler": "x"},
        {"tiling": "x"},
        {"tile": 32, "overlap": 32},
        {"batch_size": 0},
    ):
        with pytest.raises(errors.ConfigError):
            dataclasses.replace(FAST, **bad).validate()


def test_check_tiling_refuses_tiles_the_network_cannot_use(tiny_model):
    check_tiling(FAST, tiny_model)
    with pytest.raises(errors.ConfigError, match="multiple"):
        check_tiling(dataclasses.replace(FAST, tile=255), tiny_model)
    with pytest.raises(errors.ConfigError, match="overlap"):
        check_tiling(dataclasses.replace(FAST, overlap=31), tiny_model)


def test_default_tile_rule(tiny_model):
    assert default_tile(tiny_model, "cpu") == 256
    gib = 2**30
    tiles = [default_tile(tiny_model, "cuda", free_bytes=f * gib) for f in (0, 1, 80)]
    assert tiles[0] == 128 and tiles == sorted(tiles) and tiles[-1] == 1024
    assert all(t % tiny_model.pad_multiple == 0 for t in tiles)
    per_px = activation_bytes_per_pixel(tiny_model)
    t = default_tile(tiny_model, "cuda", free_bytes=4 * gib)
    assert t * t * 8 * per_px <= 0.5 * 4 * gib


# --- the unit of work --------------------------------------------------------------------


def test_process_plane_is_pure_picklable_and_in_input_units(tmp_path, ref):
    data = image((3, 12, 10))
    path = write_tiff(tmp_path / "z.tif", data, "ZYX")
    settings = dataclasses.replace(FAST, difficulty=True, save_samples=True)
    for obj in (settings, ref, process_plane):
        assert pickle.loads(pickle.dumps(obj)) == obj

    a = process_plane(path, 1, settings, ref)
    b = process_plane(str(path), 1, settings, ref, plane=data[1])
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.spread, b.spread)
    assert a.mean.shape == a.spread.shape == a.difficulty.shape == (24, 20)
    assert a.samples.shape == (2, 24, 20)
    assert a.mean.dtype == a.spread.dtype == np.float32

    # the same numbers by hand: normalise with the model's percentiles, sample, map back
    model = get_model(ref)
    norm, p = percentile_normalize(data[1], model.config.norm_low, model.config.norm_high)
    rec = sample_plane(
        model,
        norm,
        tile=256,
        overlap=32,
        samples=2,
        steps=2,
        seed=0,
        plane_index=1,
        return_samples=True,
        tta=settings.tta,
    )
    assert settings.tta  # the default: sample k from view k % 8
    half = (p.high - p.low) / 2
    np.testing.assert_allclose(a.mean, rec.mean * half + (p.high + p.low) / 2, rtol=1e-5)
    # the variance written is the samples' variance pooled over the default Gaussian
    sigma = settings.variance_smoothing
    assert sigma == DEFAULT_VARIANCE_SMOOTHING > 0
    pooled = gaussian_filter(rec.var.astype(np.float64), sigma, mode="reflect")
    np.testing.assert_allclose(a.spread, pooled * half**2, rtol=1e-4)
    raw = process_plane(path, 1, dataclasses.replace(settings, variance_smoothing=0), ref)
    np.testing.assert_allclose(raw.spread, rec.var * half**2, rtol=1e-5)
    np.testing.assert_array_equal(raw.mean, a.mean)  # pooling touches only the variance
    np.testing.assert_allclose(a.difficulty, rec.difficulty)  # lambda: not rescaled
    np.testing.assert_allclose(a.samples.mean(axis=0), a.mean, rtol=1e-4, atol=1e-2)
    std = process_plane(path, 1, dataclasses.replace(settings, spread="std"), ref)
    np.testing.assert_allclose(std.spread, np.sqrt(pooled) * half, rtol=1e-4)
    other = process_plane(path, 2, settings, ref)
    assert not np.array_equal(other.mean, a.mean)


def test_model_is_loaded_once_per_process(ref):
    assert get_model(ref) is get_model(ModelRef(ref.path, "cpu", "other"))


def test_out_of_memory_halves_batch_then_tile(tmp_path, ref, monkeypatch):
    path = write_tiff(tmp_path / "p.tif", image((40, 36)), "YX")
    calls = []
    real = run_plane.reconstruct_plane

    def fake(model, plane, settings, **kw):
        calls.append((settings.batch_size, settings.tile))
        if settings.batch_size is None or settings.batch_size > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(model, plane, settings, **kw)

    monkeypatch.setattr(run_plane, "reconstruct_plane", fake)
    told = []
    out = process_plane(path, 0, dataclasses.replace(FAST, batch_size=8), ref, notice=told.append)
    assert calls == [(8, 256), (4, 256), (2, 256)]
    assert out.settings.batch_size == 2 and out.mean.shape == (80, 72)
    assert len(told) == 2 and "retrying with --batch-size 4" in told[0]

    def always(model, plane, settings, **kw):
        calls.append((settings.batch_size, settings.tile))
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(run_plane, "reconstruct_plane", always)
    calls.clear()
    with pytest.raises(errors.DeviceOutOfMemoryError, match=r"p\.tif"):
        process_plane(path, 0, dataclasses.replace(FAST, tile=128, batch_size=2), ref)
    # batch 2 -> 1, then the tile actually used (80: the whole 80x72 output plane) is
    # halved to 40, then to 32 (the smallest), with batch 1
    assert calls == [(2, 128), (1, 128), (1, 40), (1, 32)]

    def other_error(model, plane, settings, **kw):
        raise RuntimeError("something else")

    monkeypatch.setattr(run_plane, "reconstruct_plane", other_error)
    with pytest.raises(RuntimeError, match="something else"):
        process_plane(path, 0, FAST, ref)


# --- files and batches -------------------------------------------------------------------


def test_enhance_file_outputs_units_and_stats(tmp_path, ref):
    path = write_tiff(tmp_path / "s.tif", image((2, 12, 10)), "ZYX", pixel_um=0.2)
    settings = dataclasses.replace(
        FAST, spread="std", difficulty=True, save_samples=True, threshold=50.0
    )
    job = discover_inputs([path])[0]
    result, _ = enhance_file(job, settings, ref)
    assert result.status == "done", result.error
    files = {k: Path(v) for k, v in result.outputs.items()}
    assert sorted(files) == ["difficulty", "mean", "samples", "std"]
    for kind, file in files.items():
        with tifffile.TiffFile(file) as tif:
            arr = tif.asarray()
            assert arr.dtype == np.float32
            assert tif.imagej_metadata["unit"] in ("micron", "µm")
            x_res = tif.pages[0].tags["XResolution"].value
            assert x_res[0] / x_res[1] == pytest.approx(1 / 0.1, rel=1e-4)
        expected = (2, 2, 24, 20) if kind == "samples" else (2, 24, 20)
        assert arr.shape == expected, kind
    std = tifffile.imread(files["std"])
    u = result.uncertainty
    assert u["std_mean"] == pytest.approx(float(std.mean(dtype=np.float64)), rel=1e-5)
    assert u["std_p99"] == pytest.approx(float(np.percentile(std, 99)), rel=1e-5)
    assert u["fraction_above"] == pytest.approx(float((std > 50.0).mean()))
    assert result.shape == [2, 12, 10] and result.output_shape == [2, 24, 20]
    assert result.planes == result.planes_done == 2
    assert set(result.timings) >= {"read", "normalise", "sample", "denormalise", "write"}
    assert not list(tmp_path.glob(".*partial*"))


def test_file_result_records_shapes_timings_skips_and_failures(tmp_path):
    path = write_tiff(tmp_path / "c.tif", image((2, 12, 10)), "ZYX", pixel_um=0.2)
    job = FileJob(input=path, out_dir=tmp_path / "o")
    result = FileResult.of_job(job, FAST, "done")
    assert result.outputs == {
        "mean": str(tmp_path / "o" / "c_cvdm.tif"),
        "var": str(tmp_path / "o" / "c_cvdm_var.tif"),
    }
    with open_tiff(path) as inp:
        result.describe(inp, 2)
    assert (result.shape, result.axes, result.planes) == ([2, 12, 10], "ZYX", 2)
    assert (result.output_shape, result.output_axes) == ([2, 24, 20], "ZYX")
    assert result.pixel_size == pytest.approx([0.1, 0.1]) and result.unit == "µm"
    result.add_timings({"read": 1.0, "write": 0.5})
    result.add_timings({"write": 0.25})
    assert result.timings == {"read": 1.0, "write": 0.75}
    result.skip()
    assert result.status == "skipped"
    assert result.reason == "outputs exist (pass --overwrite to redo)"

    expected = FileResult.of_job(job, FAST, "done")
    bad = errors.NotATiffError("not a TIFF", path=path, hint="check it")
    expected.fail(bad)
    assert expected.status == "failed" and expected.exception is bad
    assert expected.error == f"{path}: not a TIFF — check it" and expected.traceback is None
    unexpected = FileResult.of_job(job, FAST, "done")
    try:
        raise ValueError("boom")
    except ValueError as exc:
        unexpected.fail(exc)
    assert unexpected.error == "unexpected ValueError: boom — rerun with --debug and report it"
    assert "ValueError: boom" in unexpected.traceback
    given = FileResult.of_job(job, FAST, "done")
    given.fail("the worker died", tb="kept")
    assert (given.error, given.exception, given.traceback) == ("the worker died", None, None)


def test_skip_existing_partial_outputs_and_overwrite(tmp_path, ref):
    path = write_tiff(tmp_path / "a.tif", image((12, 10)), "YX")
    job = FileJob(input=path, out_dir=tmp_path)
    first, _ = enhance_file(job, FAST, ref)
    assert first.status == "done"
    mtime = Path(first.outputs["mean"]).stat().st_mtime_ns
    again, _ = enhance_file(job, FAST, ref)
    assert again.status == "skipped" and "overwrite" in again.reason
    assert Path(first.outputs["mean"]).stat().st_mtime_ns == mtime
    # asking for an extra output while the others exist: refuse rather than overwrite
    more, _ = enhance_file(job, dataclasses.replace(FAST, difficulty=True), ref)
    assert more.status == "failed" and "a_cvdm_difficulty.tif" in more.error
    redo, _ = enhance_file(job, dataclasses.replace(FAST, overwrite=True), ref)
    assert redo.status == "done"


class _StopAfter(Reporter):
    def __init__(self, planes: int) -> None:
        self.left = planes
        self.results = []

    def plane_done(self, job, index):
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt

    def file_done(self, result):
        self.results.append(result)


def test_interrupt_leaves_no_partial_output(tmp_path, ref):
    a = write_tiff(tmp_path / "a.tif", image((12, 10)), "YX")
    b = write_tiff(tmp_path / "b.tif", image((3, 12, 10)), "ZYX")
    jobs = discover_inputs([a, b])
    rep = _StopAfter(planes=2)  # a's only plane, then the first plane of b
    batch = run_batch(jobs, FAST, ref, reporter=rep)
    assert batch.interrupted
    assert [f.status for f in batch.files] == ["done", "interrupted"]
    assert batch.files[1].planes_done == 1
    assert (tmp_path / "a_cvdm.tif").exists() and (tmp_path / "a_cvdm_var.tif").exists()
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["a.tif", "a_cvdm.tif", "a_cvdm_var.tif", "b.tif"]
    summary = batch.to_dict()
    assert summary["interrupted"] is True and summary["done"] == 1


def test_batch_goes_on_past_a_corrupt_file(tmp_path, ref):
    write_tiff(tmp_path / "good.tif", image((12, 10)), "YX")
    (tmp_path / "bad.tif").write_bytes(b"\x89PNG\r\n\x1a\n not a tiff")
    batch = run_batch(discover_inputs([tmp_path]), FAST, ref)
    status = {Path(f.input).name: f.status for f in batch.files}
    assert status == {"bad.tif": "failed", "good.tif": "done"}
    bad = batch.failed[0]
    assert "not a TIFF" in bad.error and isinstance(bad.exception, errors.NotATiffError)
    assert not (tmp_path / "bad_cvdm.tif").exists()
    assert batch.to_dict()["failures"][0]["input"].endswith("bad.tif")


def test_dry_run_writes_nothing(tmp_path, ref):
    write_tiff(tmp_path / "a.tif", image((2, 40, 36)), "ZYX")
    jobs = discover_inputs([tmp_path])
    settings = dataclasses.replace(FAST, tile=32, overlap=8)
    before = sorted(tmp_path.iterdir())
    batch = run_batch(jobs, settings, ref, dry_run=True)
    assert sorted(tmp_path.iterdir()) == before
    plan = batch.files[0]
    assert plan.status == "planned" and plan.planes == 2
    assert plan.tiles == 9  # 80x72 output in 32-pixel tiles overlapping by >= 8
    assert plan.estimated_seconds > 0
    assert batch.to_dict()["estimated_seconds"] == pytest.approx(plan.estimated_seconds, abs=1e-3)


def test_process_plane_runs_in_another_process(tmp_path, ref):
    """What a Dask layer will do: ship (path, index, settings, ref) to a fresh process."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    path = write_tiff(tmp_path / "z.tif", image((2, 12, 10)), "ZYX")
    here = process_plane(path, 1, FAST, ref)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        1, mp_context=ctx, initializer=torch.set_num_threads, initargs=(1,)
    ) as pool:
        there = pool.submit(process_plane, path, 1, FAST, ref).result(timeout=120)
    np.testing.assert_array_equal(here.mean, there.mean)
    np.testing.assert_array_equal(here.spread, there.spread)
    assert there.norm == here.norm and there.settings == FAST
