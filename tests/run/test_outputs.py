"""The outputs of one file (cvdm_cli.run.outputs): FileOutputs writes planes in any order
with the same bytes and statistics, aborts leave nothing behind, commit puts the final
names in place; the existing-outputs check; exceptions -> one line (cvdm_cli.errors).

No model is needed: the planes are made up here (PlaneOutput, input units).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cvdm_cli import errors
from cvdm_cli.core.normalize import NormParams
from cvdm_cli.io.tiff import IncompleteOutputError, open_tiff
from cvdm_cli.run.inputs import FileJob
from cvdm_cli.run.outputs import (
    OUTPUT_KINDS,
    OUTPUT_SUFFIXES,
    STD_SUBSAMPLE,
    FileOutputs,
    StdStats,
    skip_existing,
)
from cvdm_cli.run.plane import PlaneOutput
from cvdm_cli.run.settings import EnhanceSettings, ModelRef

N, NY, NX, SCALE, K = 3, 6, 5, 2, 2
SETTINGS = EnhanceSettings(
    samples=K, steps=2, tile=256, overlap=32, difficulty=True, save_samples=True, threshold=30.0
)
REF = ModelRef(path="/models/tiny.safetensors", name="tiny", sha256="ab" * 32)
ALL = ["s_cvdm.tif", "s_cvdm_difficulty.tif", "s_cvdm_samples.tif", "s_cvdm_var.tif"]


@pytest.fixture
def src(tmp_path) -> Path:
    """A 3-plane ZYX input of 6 x 5 pixels, 0.2 µm."""
    data = np.random.default_rng(0).integers(100, 4000, size=(N, NY, NX)).astype(np.uint16)
    path = tmp_path / "s.tif"
    tifffile.imwrite(
        path, data, imagej=True, metadata={"axes": "ZYX", "unit": "um"}, resolution=(5.0, 5.0)
    )
    return path


def planes(settings: EnhanceSettings = SETTINGS) -> list[PlaneOutput]:
    """Made-up outputs of every plane on the (12, 10) output grid: variance in [0, 2500]."""
    rng = np.random.default_rng(1)
    h, w = NY * SCALE, NX * SCALE
    out = []
    for i in range(N):
        out.append(
            PlaneOutput(
                index=i,
                mean=rng.uniform(100, 4000, (h, w)).astype(np.float32),
                spread=rng.uniform(0, 2500, (h, w)).astype(np.float32),
                difficulty=rng.uniform(0, 1, (h, w)).astype(np.float32),
                samples=rng.uniform(100, 4000, (K, h, w)).astype(np.float32),
                norm=NormParams(100.0, 4000.0),
                settings=settings,
            )
        )
    return out


def listing(folder: Path) -> list[str]:
    """Every file name in ``folder``, hidden partial files included."""
    return sorted(p.name for p in folder.iterdir())


def write_all(src: Path, out_dir: Path, order: list[int], settings=SETTINGS):
    job = FileJob(input=src, out_dir=out_dir)
    made = planes(settings)
    timings: dict[str, float] = {}
    with (
        open_tiff(src) as inp,
        FileOutputs(job, inp, settings, SCALE, REF, timings=timings) as outputs,
    ):
        for i in order:
            outputs.write(made[i])
        assert outputs.planes_written == N
        stats = outputs.commit()
    return stats, made, timings, outputs


def test_planes_in_any_order_give_the_same_bytes_and_statistics(src, tmp_path):
    ordered, made, timings, _ = write_all(src, tmp_path / "a", [0, 1, 2])
    shuffled, _, _, _ = write_all(src, tmp_path / "b", [2, 0, 1])
    assert listing(tmp_path / "a") == listing(tmp_path / "b") == ALL
    for name in ALL:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert shuffled == ordered  # the same float64 sums, not just close ones
    assert timings["write"] > 0

    # each plane went to its own index, in input units as given
    a = tmp_path / "a"
    mean, var = tifffile.imread(a / "s_cvdm.tif"), tifffile.imread(a / "s_cvdm_var.tif")
    assert mean.shape == var.shape == (N, 12, 10) and mean.dtype == np.float32
    samples = tifffile.imread(a / "s_cvdm_samples.tif")
    assert samples.shape == (K, N, 12, 10)  # the samples on the free T axis
    for i, out in enumerate(made):
        np.testing.assert_array_equal(mean[i], out.mean)
        np.testing.assert_array_equal(var[i], out.spread)
        np.testing.assert_array_equal(samples[:, i], out.samples)
    np.testing.assert_array_equal(
        tifffile.imread(a / "s_cvdm_difficulty.tif")[1], made[1].difficulty
    )

    # statistics of the std = sqrt(variance) over the whole file (every pixel kept: small)
    std = np.sqrt(var.astype(np.float64))
    assert ordered["std_mean"] == pytest.approx(std.mean(), rel=1e-6)
    assert ordered["std_p99"] == pytest.approx(np.percentile(np.sqrt(var), 99), rel=1e-6)
    assert ordered["threshold"] == 30.0
    assert ordered["fraction_above"] == np.count_nonzero(np.sqrt(var) > 30.0) / var.size
    assert 0.5 < ordered["fraction_above"] < 1  # the threshold cuts inside the values

    # what each file holds, in its provenance record
    with tifffile.TiffFile(a / "s_cvdm_var.tif") as tif:
        record = json.loads(tif.imagej_metadata["Info"])
    assert record["output"] == OUTPUT_KINDS["var"].holds and record["input"] == "s.tif"
    assert record["model"] == {"name": "tiny", "sha256": "ab" * 32}


def test_std_output_statistics_are_of_the_written_std(src, tmp_path):
    settings = dataclasses.replace(SETTINGS, spread="std", difficulty=False, save_samples=False)
    stats, _, _, outputs = write_all(src, tmp_path, [1, 2, 0], settings)
    assert set(outputs.paths) == {"mean", "std"}
    std = tifffile.imread(tmp_path / "s_cvdm_std.tif")
    assert stats["std_mean"] == pytest.approx(std.mean(dtype=np.float64), rel=1e-6)
    assert stats["fraction_above"] == np.count_nonzero(std > 30.0) / std.size
    assert stats["fraction_above"] > 0.9  # std written as given: mostly well above 30


def test_std_stats_subsample_in_plane_order_and_result_is_repeatable():
    rng = np.random.default_rng(2)
    parts = [rng.uniform(0, 10, (4, 9)) for _ in range(3)]
    stats = StdStats(3 * STD_SUBSAMPLE, threshold=None)  # keep every third pixel
    assert stats.stride == 3
    for i in (2, 0, 1):
        stats.add(i, parts[i])
    got = stats.result()
    kept = np.concatenate([p.ravel()[::3] for p in parts])
    total = sum(float(p.sum(dtype=np.float64)) for p in parts)  # plane order
    assert got == {"std_mean": total / 108, "std_p99": float(np.percentile(kept, 99))}
    assert stats.result() == got  # reading the result changes nothing
    assert StdStats(10, 1.0).result() == {"std_mean": None, "std_p99": None}

    # float64 addition depends on the order: the sums are taken in plane order whatever
    # order the planes came in (1e16 + 1 rounds back to 1e16; 1 + 1 + 1e16 does not)
    big = StdStats(3, threshold=None)
    for i, value in ((1, 1.0), (2, 1.0), (0, 1e16)):
        big.add(i, np.array([value]))
    assert (1.0 + 1.0 + 1e16) / 3 != 1e16 / 3
    assert big.result()["std_mean"] == ((0.0 + 1e16) + 1.0 + 1.0) / 3 == 1e16 / 3


def test_abort_and_leaving_without_commit_delete_every_partial_file(src, tmp_path):
    job = FileJob(input=src, out_dir=tmp_path / "new" / "out")  # created on the way
    made = planes()
    with open_tiff(src) as inp:
        outputs = FileOutputs(job, inp, SETTINGS, SCALE, REF)
        hidden = listing(job.out_dir)
        assert len(hidden) == 4 and all(n.startswith(".") and "partial" in n for n in hidden)
        outputs.write(made[0])
        outputs.abort()
        outputs.abort()  # idempotent
        assert listing(job.out_dir) == []

        with FileOutputs(job, inp, SETTINGS, SCALE, REF) as outputs:
            for out in made:
                outputs.write(out)  # complete, but never committed
        assert listing(job.out_dir) == []

        for stop in (ValueError("a failed plane"), KeyboardInterrupt()):
            with pytest.raises(type(stop)), FileOutputs(job, inp, SETTINGS, SCALE, REF) as o:
                o.write(made[1])
                raise stop
            assert listing(job.out_dir) == []

        # a commit with a plane missing fails and deletes all four files
        with (
            pytest.raises(IncompleteOutputError, match="2 of 3"),
            FileOutputs(job, inp, SETTINGS, SCALE, REF) as outputs,
        ):
            outputs.write(made[0])
            outputs.write(made[2])
            outputs.commit()
        assert listing(job.out_dir) == []


def test_a_failure_while_creating_deletes_the_files_already_created(src, tmp_path):
    (tmp_path / "s_cvdm_var.tif").write_bytes(b"old")  # the second kind: mean comes first
    job = FileJob(input=src, out_dir=tmp_path)
    with open_tiff(src) as inp, pytest.raises(errors.OutputExistsError, match="s_cvdm_var"):
        FileOutputs(job, inp, SETTINGS, SCALE, REF)
    assert listing(tmp_path) == ["s.tif", "s_cvdm_var.tif"]  # no partial mean left
    assert (tmp_path / "s_cvdm_var.tif").read_bytes() == b"old"


def test_commit_puts_the_final_names_in_place(src, tmp_path):
    stats, _, _, outputs = write_all(src, tmp_path / "o", [0, 1, 2])
    job = FileJob(input=src, out_dir=tmp_path / "o")
    assert outputs.paths == job.outputs(SETTINGS)
    assert sorted(p.name for p in outputs.paths.values()) == listing(tmp_path / "o") == ALL
    assert stats["std_mean"] > 0
    outputs.abort()  # after a commit: a no-op
    assert listing(tmp_path / "o") == ALL


def test_existing_outputs_skip_refuse_or_go(src, tmp_path):
    job = FileJob(input=src, out_dir=tmp_path)
    settings = dataclasses.replace(SETTINGS, difficulty=False, save_samples=False)
    assert skip_existing(job, settings) is False  # none there: go
    (tmp_path / "s_cvdm.tif").write_bytes(b"x")
    with pytest.raises(errors.OutputExistsError) as err:
        skip_existing(job, settings)
    assert err.value.path == str(src)
    assert "s_cvdm.tif already exist(s) but s_cvdm_var.tif do(es) not" in err.value.message
    assert "--overwrite" in err.value.hint
    assert skip_existing(job, dataclasses.replace(settings, overwrite=True)) is False
    (tmp_path / "s_cvdm_var.tif").write_bytes(b"x")
    assert skip_existing(job, settings) is True  # all there: skip
    # asking for one more output than was made: some exist, so refuse
    with pytest.raises(errors.OutputExistsError, match=r"s_cvdm_difficulty\.tif do"):
        skip_existing(job, dataclasses.replace(settings, difficulty=True))


def test_output_kinds_name_the_files():
    assert {kind: k.suffix for kind, k in OUTPUT_KINDS.items()} == OUTPUT_SUFFIXES
    job = FileJob(input=Path("/d/cell.ome.tif"), out_dir=Path("/o"))
    names = [job.output_path(kind).name for kind in OUTPUT_KINDS]
    assert names == [
        "cell_cvdm.tif",
        "cell_cvdm_var.tif",
        "cell_cvdm_std.tif",
        "cell_cvdm_difficulty.tif",
        "cell_cvdm_samples.tif",
    ]


def test_describe_gives_one_line_per_kind_of_exception():
    err = errors.NotATiffError("not a TIFF", path="a.tif", hint="check the file")
    assert errors.describe(err) == "a.tif: not a TIFF — check the file"
    assert errors.describe(FileNotFoundError(2, "No such file", "b.tif")) == "b.tif: No such file"
    assert errors.describe(OSError(5, "I/O error")) == "I/O error"
    assert errors.describe(MemoryError()).startswith("out of memory — use a smaller --tile")
    assert errors.describe(ValueError("boom")) == (
        "unexpected ValueError: boom — rerun with --debug and report it"
    )
    assert errors.describe(OSError("no strerror")).startswith("unexpected OSError: no strerror")
    expected = [err, OSError(5, "x"), MemoryError()]
    assert [errors.is_expected(e) for e in [*expected, ValueError(), KeyError()]] == [
        True,
        True,
        True,
        False,
        False,
    ]
