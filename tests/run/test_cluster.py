"""Batches on Dask (cvdm_cli.run.cluster, `--workers`, `--gpus`, `--scheduler`): outputs
byte-identical to a single-process run, a killed worker, failing files reported once,
Ctrl-C, resuming, the missing extra, and a no-option path that never imports Dask.

The cluster is a LocalCluster of 2 single-threaded worker processes on 127.0.0.1, started
once for the module; the CLI reaches it through --scheduler.
"""

from __future__ import annotations

import json
import logging
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

distributed = pytest.importorskip("distributed")  # the optional `cluster` extra

from conftest import cvdm, default_sigint, json_lines  # noqa: E402

from cvdm_cli import errors  # noqa: E402
from cvdm_cli.core.devices import pick_precision  # noqa: E402
from cvdm_cli.run import cluster  # noqa: E402
from cvdm_cli.run.batch import Reporter, run_batch  # noqa: E402
from cvdm_cli.run.inputs import discover_inputs  # noqa: E402
from cvdm_cli.run.settings import EnhanceSettings, ModelRef  # noqa: E402

FAST = ["--samples", "2", "--steps", "2", "--tile", "16", "--overlap", "4"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CVDM_DEBUG": ""}


pytestmark = pytest.mark.usefixtures("one_thread", "no_debug")


@pytest.fixture(scope="module")
def dask_cluster():
    """A scheduler on 127.0.0.1 with 2 worker processes of 1 thread each."""
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as lc:
        yield lc


def write(path: Path, shape: tuple[int, ...], axes: str, *, seed: int = 0) -> Path:
    data = np.random.default_rng(seed).integers(100, 4000, size=shape).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"axes": axes, "unit": "um", "spacing": 0.5}
    tifffile.imwrite(path, data, imagej=True, metadata=meta, resolution=(5.0, 5.0))
    return path


def listing(folder: Path) -> list[str]:
    """Every file name under ``folder``, hidden partial files included."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def assert_same_outputs(one: Path, two: Path, names: list[str]) -> None:
    for name in names:
        a, b = tifffile.imread(one / name), tifffile.imread(two / name)
        assert a.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_array_equal(a, b)  # bit-identical floats
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


# --- options, the missing extra, the path without options -----------------------------------


def test_parse_gpus_and_device_mapping():
    assert cluster.parse_gpus("all") == "all"
    assert cluster.parse_gpus(" 0, 2 ") == (0, 2)
    for bad in ("", "0,,1", "-1", "x", "1,1"):
        with pytest.raises(errors.ConfigError, match="--gpus"):
            cluster.parse_gpus(bad)
    assert cluster.gpu_devices("all", 2) == ("0", "1")
    assert cluster.gpu_devices((1,), 4) == ("1",)
    # this process sees physical GPUs 2 and 3 (SLURM): its GPU 1 is physical 3
    assert cluster.gpu_devices((1,), 2, visible="2,3") == ("3",)
    assert cluster.gpu_devices("all", 2, visible="GPU-aa,GPU-bb") == ("GPU-aa", "GPU-bb")
    with pytest.raises(errors.DeviceError, match="no GPU 2"):
        cluster.gpu_devices((0, 2), 2)
    with pytest.raises(errors.DeviceError, match="none is visible"):
        cluster.gpu_devices("all", 0)


def test_worker_preload_drops_only_the_scheduler_gone_heartbeat_error():
    """Local workers log a heartbeat ERROR with a traceback when our own cluster closes
    under a running task; the preload drops that record and nothing else."""
    logger = logging.getLogger("distributed.worker")
    before = list(logger.filters)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    logger.addHandler(handler)
    try:
        exec(cluster._QUIET_HEARTBEAT, {})
        exec(cluster._QUIET_HEARTBEAT, {})  # Dask may run a preload twice: one filter
        assert len(logger.filters) == len(before) + 1
        try:
            raise OSError("Stream is closed")
        except OSError:
            logger.exception("Failed to communicate with scheduler during heartbeat.")
        logger.error("Unexpected exception during heartbeat. Closing worker.")
        logging.getLogger("distributed.worker.state_machine").warning("another message")
        assert [r.getMessage() for r in records] == [
            "Unexpected exception during heartbeat. Closing worker.",
            "another message",
        ]
    finally:
        logger.removeHandler(handler)
        logger.filters[:] = before


def _worker_preload_state() -> tuple[list[str], bool]:
    import signal

    names = [type(f).__name__ for f in logging.getLogger("distributed.worker").filters]
    return names, signal.getsignal(signal.SIGINT) == signal.SIG_IGN


@pytest.mark.slow
def test_local_cluster_workers_run_the_preloads():
    """The workers --workers starts ignore SIGINT and carry the heartbeat filter, once."""
    with (
        cluster._local_cluster([{}], ["cpu0"]) as local,
        distributed.Client(local) as client,
    ):
        states = list(client.run(_worker_preload_state).values())
    assert states == [(["_DropSchedulerGone"], True)]


def test_option_errors_exit_2_before_any_work(tmp_path, tiny_weights):
    src = write(tmp_path / "a.tif", (12, 10), "YX")
    cases = [
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "cannot be combined"),
        (["--gpus", "0,x"], "--gpus"),
        (["--gpus", "all", "--device", "cpu"], "--device cpu"),
        (["--scheduler", str(tmp_path / "sched.json")], "sched.json"),  # not JSON
    ]
    (tmp_path / "sched.json").write_text("not json")
    if not torch.cuda.is_available():
        cases.append((["--gpus", "all"], "none is visible"))
    for extra, words in cases:
        r = cvdm("enhance", src, "-m", tiny_weights, *FAST, *extra)
        assert r.code == 2, (extra, r.err)
        lines = r.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], r.err
    assert listing(tmp_path) == ["a.tif", "sched.json"]


def test_missing_extra_is_one_line_naming_the_extra(tmp_path, tiny_weights, monkeypatch):
    import cvdm_cli.run

    src = write(tmp_path / "a.tif", (12, 10), "YX")
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` fails
    monkeypatch.delitem(sys.modules, "cvdm_cli.run.cluster")
    monkeypatch.delattr(cvdm_cli.run, "cluster")
    for option in (["--workers", "2"], ["--gpus", "all"], ["--scheduler", "tcp://x:8786"]):
        r = cvdm("uncertainty", src, "-m", tiny_weights, *FAST, *option)
        assert r.code == 2
        lines = r.err.strip().splitlines()
        assert len(lines) == 1 and 'pip install "cvdm-cli[cluster]"' in lines[0], r.err
    assert listing(tmp_path) == ["a.tif"]


def test_no_option_path_does_not_import_dask(tmp_path, tiny_weights):
    src = write(tmp_path / "a.tif", (12, 10), "YX")
    code = (
        "import sys\n"
        "sys.argv = ['cvdm', *sys.argv[1:]]\n"
        "from cvdm_cli.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'))\n"
        "print('DASK' if loaded else 'NO-DASK', code or 0, 'cvdm_cli.run.cluster' in sys.modules)\n"
    )
    args = ["enhance", str(src), "-m", str(tiny_weights), "--samples", "1", "--steps", "1", "-q"]
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert done.stdout.strip().splitlines()[-1] == "NO-DASK 0 False", done.stderr
    assert (tmp_path / "a_cvdm.tif").exists()
    helped = cvdm("uncertainty", "--help")
    assert all(o in helped.out for o in ("--workers", "--gpus", "--scheduler"))


# --- on the cluster ---------------------------------------------------------------------------


def test_scheduler_outputs_identical_to_one_process_and_rerun_resumes(
    tmp_path, tiny_weights, dask_cluster
):
    data = tmp_path / "in"
    write(data / "flat.tif", (24, 20), "YX", seed=1)  # 2D: one plane, 4 tiles
    write(data / "stack.tif", (3, 16, 12), "ZYX", seed=2)  # a stack of 3 planes
    common = ["-m", tiny_weights, *FAST, "--seed", "5", "--difficulty", "--json"]
    one = cvdm("enhance", data, "-o", tmp_path / "one", *common)
    assert one.code == 0, one.err
    addr = dask_cluster.scheduler_address
    assert addr.startswith("tcp://127.0.0.1:")
    many = cvdm("enhance", data, "-o", tmp_path / "many", *common, "--scheduler", addr)
    assert many.code == 0, many.err
    names = [f"{s}_cvdm{k}.tif" for s in ("flat", "stack") for k in ("", "_var", "_difficulty")]
    assert listing(tmp_path / "many") == sorted(names)  # no partial file left
    assert_same_outputs(tmp_path / "one", tmp_path / "many", names)

    *files, summary = json_lines(many.out)
    by_name = {Path(f["input"]).name: f for f in files}
    single = {Path(f["input"]).name: f for f in json_lines(one.out)[:-1]}
    for name in ("flat.tif", "stack.tif"):
        ours, theirs = by_name[name], single[name]
        assert ours["status"] == "done" and ours["planes_done"] == theirs["planes"]
        assert ours["uncertainty"] == theirs["uncertainty"]  # the same float64 sums
        assert ours["output_shape"] == theirs["output_shape"]
    assert summary["done"] == 2 and summary["failed"] == 0 and summary["device"] == "cpu"
    assert summary["cluster"].startswith(f"scheduler {addr}")
    workers = summary["workers"]
    assert len(workers) == 2  # both worker processes took planes
    assert sum(w["planes"] for w in workers) == 4 and sum(w["tasks"] for w in workers) == 4
    assert sum(w["input_megapixels"] for w in workers) == pytest.approx(summary["input_megapixels"])
    assert all(w["megapixels_per_second"] > 0 for w in workers)
    assert summary["megapixels_per_second"] > 0

    again = cvdm("enhance", data, "-o", tmp_path / "many", *common, "--scheduler", addr)
    assert again.code == 0
    *files, summary = json_lines(again.out)
    assert [f["status"] for f in files] == ["skipped", "skipped"] and summary["skipped"] == 2
    assert summary["workers"] == []  # nothing was sent to the workers

    plain = cvdm("enhance", data, "-o", tmp_path / "many", "-m", tiny_weights, *FAST,
                 "--scheduler", addr, "--overwrite")  # fmt: skip
    assert plain.code == 0 and "cluster" in plain.err and "Mpx/s" in plain.err


def test_failing_files_are_reported_once_and_the_rest_finish(tmp_path, tiny_weights, dask_cluster):
    write(tmp_path / "a.tif", (12, 10), "YX")
    (tmp_path / "b.tif").write_bytes(b"II*\x00" + b"\x00" * 3)  # truncated: fails on the client
    nan = np.random.default_rng(0).uniform(100, 200, size=(3, 12, 10)).astype(np.float32)
    nan[1, 4, 4] = np.nan  # plane 1 fails on a worker (a CvdmError, returned as a value)
    tifffile.imwrite(tmp_path / "n.tif", nan, imagej=True, metadata={"axes": "ZYX"})
    addr = dask_cluster.scheduler_address
    r = cvdm("uncertainty", tmp_path, "-m", tiny_weights, *FAST, "--scheduler", addr, "--json")
    assert r.code == 1
    *files, summary = json_lines(r.out)
    status = {Path(f["input"]).name: f["status"] for f in files}
    assert status == {"a.tif": "done", "b.tif": "failed", "n.tif": "failed"}
    assert len(files) == 3  # each file reported once
    errs = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(errs) == 2 and "Traceback" not in r.err
    assert any("b.tif" in e for e in errs)
    assert any("n.tif" in e and "NaN" in e and "--replace-nan" in e for e in errs)
    assert [f["input"] for f in summary["failures"]] == [
        str(tmp_path / "b.tif"),
        str(tmp_path / "n.tif"),
    ]
    assert listing(tmp_path) == ["a.tif", "a_cvdm_difficulty.tif", "a_cvdm_var.tif",
                                 "b.tif", "n.tif"]  # fmt: skip


def test_killed_worker_is_replaced_and_outputs_are_identical(tmp_path, tiny_weights, dask_cluster):
    src = write(tmp_path / "in" / "k.tif", (6, 24, 20), "ZYX", seed=3)
    settings = EnhanceSettings(samples=2, steps=8, tile=16, overlap=4, seed=7)
    local = ModelRef(path=str(tiny_weights), device="cpu", name="tiny")
    ref_jobs = discover_inputs([src], output_dir=tmp_path / "one")
    assert run_batch(ref_jobs, settings, local).count("done") == 1

    jobs = discover_inputs([src], output_dir=tmp_path / "many")
    with distributed.Client(dask_cluster.scheduler_address) as client:
        ref, setup = cluster.prepare_workers(
            client, str(tiny_weights), name="tiny", device="cpu", tile=16, samples=2
        )
        assert ref.device == "cpu" and setup.tile == 16
        assert setup.precision == pick_precision("auto", torch.device("cpu"))
        pids = client.run(os.getpid)

        class Killer(Reporter):
            """Kill a worker that is running a plane as soon as the first plane is back."""

            victim: int | None = None

            def plane_done(self, job, index):
                if self.victim is None:
                    busy = [a for a, keys in client.processing().items() if keys]
                    self.victim = pids[busy[0]]
                    os.kill(self.victim, signal.SIGKILL)

        killer = Killer()
        batch = cluster.run_batch_distributed(
            jobs, settings, ref, client, reporter=killer, planes_per_task=1
        )
        assert killer.victim is not None
        assert batch.count("done") == 1 and not batch.failed, batch.files[0].error
        assert sum(w.planes for w in batch.workers) == 6
        client.wait_for_workers(2, timeout=120)  # the nanny started a new worker process
        assert killer.victim not in client.run(os.getpid).values()
    names = ["k_cvdm.tif", "k_cvdm_var.tif"]
    assert listing(tmp_path / "many") == names
    assert_same_outputs(tmp_path / "one", tmp_path / "many", names)

    # groups of planes per task and a window of one task give the same bytes again
    again = discover_inputs([src], output_dir=tmp_path / "grouped")
    with distributed.Client(dask_cluster.scheduler_address) as client:
        batch = cluster.run_batch_distributed(
            again, settings, ref, client, planes_per_task=4, window=1
        )
    assert batch.count("done") == 1 and sum(w.tasks for w in batch.workers) == 2
    assert_same_outputs(tmp_path / "one", tmp_path / "grouped", names)


# --- a local cluster from the CLI: --workers, dashboard, Ctrl-C --------------------------------


@pytest.mark.slow
def test_workers_option_then_ctrl_c_cancels_cleanly(tmp_path, tiny_weights):
    """`--workers 2` starts its own cluster (dashboard printed); Ctrl-C in a terminal (SIGINT
    to the whole process group) exits 130, keeps no partial file and stops every process."""
    write(tmp_path / "a.tif", (12, 10), "YX")
    write(tmp_path / "b.tif", (40, 32, 32), "ZYX")  # 40 planes: seconds of work
    argv = ["enhance", str(tmp_path), "-m", str(tiny_weights), "--samples", "4",
            "--steps", "10", "--json", "--workers", "2"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", "from cvdm_cli.cli.app import main; main()", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        preexec_fn=default_sigint,
        start_new_session=True,  # its own process group, as in a terminal
    )
    try:
        first = json.loads(proc.stdout.readline())
        assert first["input"] == str(tmp_path / "a.tif") and first["status"] == "done"
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".b_cvdm.tif.partial-*")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(1.5)  # b's planes are running
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "dashboard: http://127.0.0.1:" in err and "interrupted" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert listing(tmp_path) == ["a.tif", "a_cvdm.tif", "a_cvdm_var.tif", "b.tif"]
    rest = json_lines(out)
    assert rest[0]["input"] == str(tmp_path / "b.tif") and rest[0]["status"] == "interrupted"
    assert rest[0]["planes_done"] < 40
    assert rest[-1]["type"] == "summary" and rest[-1]["interrupted"] is True
    deadline = time.monotonic() + 30  # the worker processes are gone too
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "worker processes outlived the client"
        time.sleep(0.2)

    # the same a.tif from one process is byte-identical
    one = cvdm("enhance", tmp_path / "a.tif", "-o", tmp_path / "one", "-m", tiny_weights,
               "--samples", "4", "--steps", "10", "-q")  # fmt: skip
    assert one.code == 0
    assert_same_outputs(tmp_path, tmp_path / "one", ["a_cvdm.tif", "a_cvdm_var.tif"])
