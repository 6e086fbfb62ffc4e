"""Batches across the GPUs of a node or a Dask cluster: the only module that imports Dask.

Imported only when ``--workers``, ``--gpus`` or ``--scheduler`` is given (importing it
without the ``cluster`` extra raises errors.MissingExtraError). The work is the
single-process pipeline's, spread by ``dask.distributed``:

- unit of work: :func:`process_planes`, a pure, picklable function of (input path, plane
  indices, EnhanceSettings, ModelRef) run on a worker; it calls
  :func:`cvdm_cli.run.process_plane` for each plane (one by default, or a group of
  planes of one file) and returns their arrays. Noise is seeded by (seed, plane, tile,
  sample), never by worker or order, so outputs are bit-identical to a single-process run
  on the same kind of device.
- workers read inputs from shared storage and load the model once (:class:`ModelPlugin`
  warms :func:`cvdm_cli.run.get_model`'s per-process cache on every worker, also on
  workers that join or restart later).
- the client alone writes outputs (:func:`run_batch_distributed`), through the same
  :class:`cvdm_cli.run.outputs.FileOutputs` as a single process: each output file is an
  :class:`cvdm_cli.io.tiff.OutputTiff` (a hidden ``.<name>.partial-<pid>`` file in the
  destination folder), filled plane by plane as results arrive in any order, and renamed
  into place only when all its planes are written. A failed file, Ctrl-C (or SIGTERM, see
  :func:`terminate_as_interrupt`) deletes the partial files; a client killed outright
  leaves only the hidden partial file, never a final name, and a rerun redoes that file.
- faults: a worker that dies has its tasks rerun elsewhere by Dask (up to the scheduler's
  ``allowed-failures``, then the file fails with a KilledWorker message); an expected
  per-file failure (a :class:`cvdm_cli.errors.CvdmError`, e.g. NaN pixels) is returned as
  a value, so it is reported once and never retried; an unexpected exception is retried
  ``retries`` times (a flaky file system), then reported once.

Local clusters (:func:`connect`): ``--workers N`` starts N worker processes with one
thread each; ``--gpus`` one worker per GPU, each pinned by its own CUDA_VISIBLE_DEVICES.
Both listen on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cvdm_cli import errors

try:
    import dask
    import distributed
    from distributed import Client, Nanny, Scheduler, SpecCluster, WorkerPlugin, as_completed
    from distributed.comm import get_address_host
except ImportError as exc:  # the optional extra is missing (or broken)
    raise errors.MissingExtraError(
        f"needs the optional Dask dependency ({exc})",
        path="--workers/--gpus/--scheduler",
        hint='install it with: pip install "cvdm-cli[cluster]"',
    ) from None

from cvdm_cli.core.devices import (
    cuda_device_count,
    default_tile,
    free_device_memory,
    pick_device,
    pick_precision,
    worker_threads,
)
from cvdm_cli.io.tiff import open_tiff
from cvdm_cli.run.batch import BatchResult, FileResult, Reporter
from cvdm_cli.run.inputs import FileJob
from cvdm_cli.run.models import clear_model_cache, get_model
from cvdm_cli.run.outputs import FileOutputs, skip_existing
from cvdm_cli.run.plane import PlaneOutput, check_tiling, process_plane
from cvdm_cli.run.settings import EnhanceSettings, ModelRef
from cvdm_cli.sampling.plane import plan_for
from cvdm_cli.sampling.settings import DEFAULT_SAMPLING

__all__ = [
    "ClusterBatchResult",
    "ClusterOptions",
    "Connection",
    "ModelPlugin",
    "SchedulerUnreachableError",
    "TaskResult",
    "WorkerSetup",
    "WorkerStats",
    "cluster_options",
    "connect",
    "gpu_devices",
    "parse_gpus",
    "prepare_workers",
    "process_planes",
    "run_batch_distributed",
    "terminate_as_interrupt",
]

PLUGIN_NAME = "cvdm-model"
# Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536; setting it at all turns off glibc's
# dynamic mmap threshold, so every large tensor is mmap'ed, faulted in and unmapped again:
# a sampling worker then ran ~2x slower than one process here. Local workers go without.
_NANNY_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
# preload of local worker processes: Ctrl-C in a terminal reaches the whole process group,
# and the client alone handles it (cancels the tasks, then closes the cluster)
_IGNORE_SIGINT = """
import signal, threading
if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
"""
# preload of local worker processes: when the client closes our own cluster (the end of a
# batch, Ctrl-C) while a worker is still inside a task, the worker's next heartbeat finds the
# scheduler gone and Dask logs it as an ERROR with a traceback. The nanny closes that worker
# anyway, so the message is noise on the user's terminal; other worker errors still show.
_QUIET_HEARTBEAT = """
import logging

class _DropSchedulerGone(logging.Filter):
    def filter(self, record):
        return not record.getMessage().startswith(
            "Failed to communicate with scheduler during heartbeat"
        )

_logger = logging.getLogger("distributed.worker")
if not any(type(f).__name__ == "_DropSchedulerGone" for f in _logger.filters):
    _logger.addFilter(_DropSchedulerGone())
"""
# seconds to wait for a --scheduler address to answer
CONNECT_TIMEOUT = 20


class SchedulerUnreachableError(errors.ConfigError):
    """``--scheduler`` names an address (or scheduler file) that does not answer."""


# --- options ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterOptions:
    """Where the work runs: exactly one of the three is set.

    workers: a local cluster of N worker processes, one thread each.
    gpus: a local cluster with one worker per entry, the entry being that worker's
        CUDA_VISIBLE_DEVICES value (a physical GPU index or UUID).
    scheduler: the address of a running scheduler (``tcp://host:8786``) or the path of a
        scheduler file (``dask scheduler --scheduler-file``).
    """

    workers: int | None = None
    gpus: tuple[str, ...] | None = None
    scheduler: str | None = None

    def describe(self) -> str:
        if self.gpus is not None:
            ids = ",".join(self.gpus)
            return f"local, {len(self.gpus)} GPU worker(s) (CUDA_VISIBLE_DEVICES {ids})"
        if self.workers is not None:
            return f"local, {self.workers} worker process(es)"
        return f"scheduler {self.scheduler}"


def parse_gpus(text: str) -> Literal["all"] | tuple[int, ...]:
    """``--gpus`` value -> "all" or the listed indices, e.g. "0,2" -> (0, 2).

    Raises errors.ConfigError for anything else (empty, negative, repeated, not a number).
    """
    value = text.strip().lower()
    if value == "all":
        return "all"
    parts = [p.strip() for p in value.split(",")]
    if not value or any(not p.isdigit() for p in parts):
        raise errors.ConfigError(
            f"expected 'all' or GPU indices such as 0,1, got {text!r}",
            path="--gpus",
            hint="e.g. --gpus all or --gpus 0,1",
        )
    indices = tuple(int(p) for p in parts)
    if len(set(indices)) != len(indices):
        raise errors.ConfigError(
            f"GPU listed twice in {text!r}", path="--gpus", hint="list each GPU once"
        )
    return indices


def gpu_devices(
    selection: Literal["all"] | Sequence[int], count: int, visible: str | None = None
) -> tuple[str, ...]:
    """The CUDA_VISIBLE_DEVICES value of each GPU worker.

    ``selection`` counts the GPUs this process sees (``count`` of them); when this process
    is itself restricted (``visible``, its CUDA_VISIBLE_DEVICES, e.g. "2,3" from SLURM),
    index i maps to the i-th entry of that list, so each worker sees the right device.
    """
    if count < 1:
        raise errors.DeviceError(
            "--gpus needs CUDA GPUs, and none is visible",
            path="--gpus",
            hint="use --workers N on a CPU machine, or check nvidia-smi and CUDA_VISIBLE_DEVICES",
        )
    indices = list(range(count)) if selection == "all" else list(selection)
    bad = [i for i in indices if i >= count]
    if bad:
        raise errors.DeviceError(
            f"there is no GPU {bad[0]} (found {count})",
            path="--gpus",
            hint=f"use indices 0..{count - 1}, or --gpus all",
        )
    ids = [s.strip() for s in (visible or "").split(",") if s.strip()]
    physical = ids[:count] if len(ids) >= count else [str(i) for i in range(count)]
    return tuple(physical[i] for i in indices)


def cluster_options(
    *,
    workers: int | None = None,
    gpus: str | None = None,
    scheduler: str | None = None,
    device: str = "auto",
) -> ClusterOptions | None:
    """Check the CLI's scale options; None when none is given (the single-process path).

    Raises errors.ConfigError (two of them together, --gpus with a non-CUDA --device) and
    errors.DeviceError (--gpus without enough GPUs).
    """
    given = [name for name, v in (("--workers", workers), ("--gpus", gpus),
                                  ("--scheduler", scheduler)) if v is not None]  # fmt: skip
    if not given:
        return None
    if len(given) > 1:
        raise errors.ConfigError(
            f"{' and '.join(given)} cannot be combined",
            path=given[0],
            hint="give one: --workers N (local CPU), --gpus (local GPUs) or --scheduler ADDRESS",
        )
    if workers is not None:
        if workers < 1:
            raise errors.ConfigError(f"must be >= 1, got {workers}", path="--workers")
        return ClusterOptions(workers=workers)
    if scheduler is not None:
        if not scheduler.strip():
            raise errors.ConfigError("empty address", path="--scheduler", hint="tcp://host:8786")
        return ClusterOptions(scheduler=scheduler.strip())
    assert gpus is not None
    selection = parse_gpus(gpus)
    spec = device.strip().lower()
    if spec not in ("auto", "cuda"):
        raise errors.ConfigError(
            f"--gpus pins each worker to one GPU and cannot be combined with --device {device}",
            path="--gpus",
            hint="drop --device (or use --workers N for CPU workers)",
        )
    count = cuda_device_count()
    return ClusterOptions(
        gpus=gpu_devices(selection, count, os.environ.get("CUDA_VISIBLE_DEVICES"))
    )


# --- connecting ------------------------------------------------------------------------------


@dataclass
class Connection:
    """A client and, for a local cluster, the cluster it started (closed by :func:`connect`)."""

    client: Client
    cluster: SpecCluster | None
    options: ClusterOptions
    dashboard_link: str

    @property
    def n_workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))

    @property
    def dashboard_has_graphs(self) -> bool:
        """False without bokeh: the dashboard then serves only its /info pages."""
        import importlib.util

        return importlib.util.find_spec("bokeh") is not None

    def describe(self) -> str:
        if self.cluster is not None:
            return self.options.describe()
        return f"{self.options.describe()}, {self.n_workers} worker(s)"


def _local_cluster(envs: Sequence[dict[str, str]], names: Sequence[str]) -> SpecCluster:
    """A scheduler and one single-threaded worker process per env, all on 127.0.0.1.

    Each worker may use ``1/len(envs)`` of the memory (Dask's own limit would be a
    thread's share of the cores, far too little for a model and a plane).
    """
    from distributed.system import MEMORY_LIMIT

    scheduler = {
        "cls": Scheduler,
        "options": {"host": "127.0.0.1", "port": 0, "dashboard_address": "127.0.0.1:8787"},
    }
    memory = int(MEMORY_LIMIT // max(1, len(envs)))
    workers = {
        name: {
            "cls": Nanny,
            "options": {
                "host": "127.0.0.1",
                "nthreads": 1,
                "memory_limit": memory,
                "env": dict(env),
                "dashboard": False,
                "silence_logs": logging.WARNING,
                "preload": [_IGNORE_SIGINT, _QUIET_HEARTBEAT],
            },
        }
        for name, env in zip(names, envs, strict=True)
    }
    return SpecCluster(
        scheduler=scheduler, workers=workers, name="cvdm", silence_logs=logging.WARNING
    )


def _scheduler_client(address: str) -> Client:
    try:
        if os.path.isfile(address):
            with open(address, encoding="utf-8") as fh:
                json.load(fh)  # a scheduler file is JSON; a clearer error than Dask's
            return Client(scheduler_file=address, timeout=CONNECT_TIMEOUT)
        return Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, ValueError, TimeoutError) as exc:
        raise SchedulerUnreachableError(
            f"cannot reach the Dask scheduler ({type(exc).__name__}: {exc})",
            path=address,
            hint="check the address (tcp://host:8786) or scheduler file, and that the "
            "scheduler is running and reachable from here",
        ) from None


@contextlib.contextmanager
def connect(options: ClusterOptions) -> Iterator[Connection]:
    """Start the local cluster of ``options`` (or connect to its scheduler); close on exit.

    An existing scheduler and its workers are left running; only the client is closed.
    """
    cluster: SpecCluster | None = None
    if options.scheduler is not None:
        client = _scheduler_client(options.scheduler)
    else:
        base: dict[str, str] = {}
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # the user's thread budget
            base["CVDM_TORCH_THREADS"] = os.environ["OMP_NUM_THREADS"]
        if options.gpus is not None:
            envs = [{**base, "CUDA_VISIBLE_DEVICES": g} for g in options.gpus]
            names = [f"gpu{g}" for g in options.gpus]
        else:
            n = options.workers or 1
            envs = [dict(base) for _ in range(n)]
            names = [f"cpu{i}" for i in range(n)]
        with warnings.catch_warnings(), dask.config.set(_NANNY_CONFIG):
            # port 8787 taken: Dask picks another, and the link shows it
            warnings.filterwarnings("ignore", message=r"Port \d+ is already in use")
            cluster = _local_cluster(envs, names)
        try:
            client = Client(cluster)
        except BaseException:
            cluster.close()
            raise
    try:
        link = ""
        with contextlib.suppress(Exception):
            link = client.dashboard_link or ""
        yield Connection(client=client, cluster=cluster, options=options, dashboard_link=link)
    finally:
        if cluster is None:  # workers of a running scheduler outlive us: free the model
            with contextlib.suppress(Exception):
                client.unregister_worker_plugin(PLUGIN_NAME)
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within this block SIGTERM (a batch system's time limit) acts like Ctrl-C, so the
    run is cancelled cleanly and its partial files deleted. Main thread only; elsewhere a
    no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


# --- the worker side -------------------------------------------------------------------------


@dataclass(frozen=True)
class _ErrorValue:
    """An expected error, carried back as a value (CvdmError's keyword-only arguments do
    not survive pickling as an exception)."""

    kind: str
    message: str
    path: str | None
    hint: str | None

    @classmethod
    def of(cls, exc: errors.CvdmError) -> _ErrorValue:
        return cls(type(exc).__name__, exc.message, exc.path, exc.hint)

    def rebuild(self) -> errors.CvdmError:
        klass = getattr(errors, self.kind, None)
        if not (isinstance(klass, type) and issubclass(klass, errors.CvdmError)):
            klass = errors.CvdmError
        return klass(self.message, path=self.path, hint=self.hint)

    def one_line(self) -> str:
        return self.rebuild().one_line()


def _whoami() -> tuple[str, str]:
    """(worker name, host) of the calling task; (pid, hostname) outside a worker."""
    try:
        worker = distributed.get_worker()
    except ValueError:
        return f"pid{os.getpid()}", socket.gethostname()
    return str(worker.name), get_address_host(worker.address)


@dataclass
class TaskResult:
    """What one :func:`process_planes` task returns.

    outputs: one PlaneOutput per plane (input units, see PlaneOutput), or empty
    when ``error`` (an expected per-file failure, one line) is set. seconds: the task's
    wall time on the worker.
    """

    outputs: list[PlaneOutput]
    worker: str
    host: str
    seconds: float
    error: _ErrorValue | None = None


def process_planes(
    path: str,
    indices: Sequence[int],
    settings: EnhanceSettings,
    model_ref: ModelRef,
) -> TaskResult:
    """Run :func:`cvdm_cli.run.process_plane` for planes ``indices`` of ``path``.

    Pure and picklable (runs on a Dask worker): the same arguments give the same arrays.
    A CvdmError (an expected, per-file failure) is returned in ``error`` instead of raised,
    so Dask does not retry it; anything else propagates (and is retried by Dask).
    """
    started = time.perf_counter()
    worker, host = _whoami()
    outputs: list[PlaneOutput] = []
    try:
        if len(indices) == 1:
            outputs.append(process_plane(path, indices[0], settings, model_ref))
        else:  # a group of planes of one file: open it once
            current = settings
            with open_tiff(path, axes=settings.axes) as inp:
                for i in indices:
                    t = time.perf_counter()
                    plane = inp.read_plane(i)
                    read = time.perf_counter() - t
                    label = f"{inp.path} {inp.plane_label(i)}"
                    out = process_plane(path, i, current, model_ref, plane=plane, label=label)
                    out.timings["read"] = read
                    current = out.settings  # smaller batch/tile after out-of-memory
                    outputs.append(out)
    except errors.CvdmError as exc:
        seconds = time.perf_counter() - started
        return TaskResult([], worker, host, seconds, error=_ErrorValue.of(exc))
    return TaskResult(outputs, worker, host, time.perf_counter() - started)


class ModelPlugin(WorkerPlugin):
    """On every worker (also those that join or restart later): load the model into the
    per-process cache once, and give torch the worker's share of the host's cores.

    host_threads: Dask threads per host (from the scheduler), so that N single-threaded
    workers on a 16-core node each use 16 // N cores (Dask starts them with
    OMP_NUM_THREADS=1, which would leave a CPU node mostly idle). A worker's
    CVDM_TORCH_THREADS, when set, caps that number (local clusters set it from the
    client's OMP_NUM_THREADS; a batch script may set it too).
    """

    name = PLUGIN_NAME

    def __init__(self, model_ref: ModelRef, host_threads: dict[str, int] | None = None) -> None:
        self.model_ref = model_ref
        self.host_threads = dict(host_threads or {})

    def _warm(self, host: str, nthreads: int) -> None:
        import torch

        # the worker's share of the host's cores: oversubscription slows convolutions down
        torch.set_num_threads(worker_threads(max(nthreads, self.host_threads.get(host, 0), 1)))
        with contextlib.suppress(Exception):  # a model that fails to load fails its tasks
            get_model(self.model_ref)

    def teardown(self, worker: Any) -> None:
        """Free the model when the run is over (a shared cluster goes on with other work)."""
        clear_model_cache()
        free_device_memory()

    async def setup(self, worker: Any) -> None:
        host = get_address_host(worker.address)
        # off the event loop: loading a model can take seconds
        await asyncio.get_running_loop().run_in_executor(
            None, self._warm, host, int(worker.state.nthreads)
        )


def _probe(
    path: str, device: str, precision: str, tile: int | None, samples: int
) -> dict[str, Any] | _ErrorValue:
    """On one worker: resolve --device / --precision and the --tile default there (the
    client may be a login node without a GPU) and load the model once."""
    try:
        if not os.path.isfile(path):
            raise errors.UnknownModelError(
                "the workers cannot read the model file",
                path=path,
                hint="put the model (or the Hugging Face cache: --cache-dir / HF_HOME) on "
                "storage the workers share, see docs/cluster.md",
            )
        dev = pick_device(device)
        prec = pick_precision(precision, dev)
        model = get_model(ModelRef(path=path, device=str(dev)))
        tile_used = default_tile(model, dev, items=min(samples, 8)) if tile is None else tile
    except errors.CvdmError as exc:
        return _ErrorValue.of(exc)
    worker, host = _whoami()
    return {"device": str(dev), "precision": prec, "tile": tile_used, "worker": worker,
            "host": host}  # fmt: skip


@dataclass(frozen=True)
class WorkerSetup:
    """What one worker resolved: device ("cpu", "cuda": each GPU worker sees only its own
    GPU), precision, and the tile to use (output pixels; None = whole planes)."""

    device: str
    precision: str
    tile: int | None
    workers: int


def prepare_workers(
    client: Client,
    model_path: str,
    *,
    name: str = "",
    sha256: str = "",
    device: str = "auto",
    precision: str = "auto",
    tile: int | None = None,
    samples: int = DEFAULT_SAMPLING.samples,
    notice: Callable[[str], None] | None = None,
) -> tuple[ModelRef, WorkerSetup]:
    """Wait for a worker, resolve device/precision/tile on it, and load the model on all.

    ``tile`` None asks the worker for the default from its device (see
    ``default_tile``); one value is then used everywhere, since the tile decides
    the noise and so the result. Raises the worker's CvdmError (e.g. errors.DeviceError
    for --device cuda on CPU workers, errors.UnknownModelError when the workers cannot
    read the model file).
    """
    if not client.scheduler_info().get("workers"):
        if notice is not None:
            notice("waiting for Dask workers to join the scheduler (Ctrl-C to stop)")
        client.wait_for_workers(1)
    future = client.submit(
        _probe, model_path, device, precision, tile, samples, pure=False, key=_key("probe")
    )
    value = future.result()
    future.release()
    if isinstance(value, _ErrorValue):
        raise value.rebuild()
    ref = ModelRef(path=model_path, device=value["device"], name=name, sha256=sha256)
    info = client.scheduler_info().get("workers", {})
    host_threads: dict[str, int] = {}
    for w in info.values():
        host_threads[w["host"]] = host_threads.get(w["host"], 0) + int(w["nthreads"])
    client.register_plugin(ModelPlugin(ref, host_threads), name=PLUGIN_NAME)
    setup = WorkerSetup(
        device=value["device"],
        precision=value["precision"],
        tile=value["tile"],
        workers=len(client.scheduler_info().get("workers", {})),
    )
    return ref, setup


def _key(what: str) -> str:
    return f"cvdm-{what}-{uuid.uuid4().hex[:12]}"


# --- the client side: results -> files -------------------------------------------------------


@dataclass
class WorkerStats:
    """Work done by one worker: tasks, planes, input megapixels and busy seconds."""

    name: str
    host: str
    tasks: int = 0
    planes: int = 0
    megapixels: float = 0.0
    seconds: float = 0.0

    @property
    def megapixels_per_second(self) -> float | None:
        return self.megapixels / self.seconds if self.seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        rate = self.megapixels_per_second
        return {
            "name": self.name,
            "host": self.host,
            "tasks": self.tasks,
            "planes": self.planes,
            "input_megapixels": round(self.megapixels, 6),
            "busy_seconds": round(self.seconds, 4),
            "megapixels_per_second": None if rate is None else round(rate, 6),
        }


@dataclass
class ClusterBatchResult(BatchResult):
    """A :class:`cvdm_cli.run.BatchResult` plus the cluster and per-worker figures.

    Files run concurrently here, so the throughput is input megapixels / wall seconds.
    """

    cluster: str = ""
    workers: list[WorkerStats] = field(default_factory=list)

    @property
    def megapixels_per_second(self) -> float | None:
        mpx = self.input_megapixels
        return mpx / self.seconds if self.seconds > 0 and mpx > 0 else None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        rate = self.megapixels_per_second
        out["megapixels_per_second"] = None if rate is None else round(rate, 6)
        out["cluster"] = self.cluster
        out["workers"] = [w.to_dict() for w in self.workers]
        return out


@dataclass
class _File:
    """One input in flight: its open outputs and the tasks still out.

    plane_pixels: input pixels per plane (Y x X), for the workers' megapixels.
    """

    order: int
    job: FileJob
    result: FileResult
    plane_pixels: int
    outputs: FileOutputs
    started: float
    next_plane: int = 0
    futures: set[Any] = field(default_factory=set)
    closed: bool = False

    @property
    def n_planes(self) -> int:
        return self.outputs.n_planes

    @property
    def done(self) -> int:
        """Planes written so far (they come back in any order)."""
        return self.outputs.planes_written


class _Run:
    """State of one :func:`run_batch_distributed` call."""

    def __init__(
        self,
        jobs: Sequence[FileJob],
        settings: EnhanceSettings,
        model_ref: ModelRef,
        client: Client,
        rep: Reporter,
        *,
        planes_per_task: int,
        retries: int,
        window: int | None,
    ) -> None:
        self.jobs = list(jobs)
        self.settings = settings
        self.ref = model_ref
        self.client = client
        self.rep = rep
        self.group = max(1, planes_per_task)
        self.retries = retries
        self.window = window
        # geometry (scale, tiles, size divisor) from a CPU copy of the model
        self.net = get_model(dataclasses.replace(model_ref, device="cpu"))
        self.scale = self.net.config.scale
        self.results: dict[int, FileResult] = {}
        self.files: list[_File] = []
        self.in_flight: dict[Any, tuple[_File, tuple[int, ...]]] = {}
        self.workers: dict[str, WorkerStats] = {}
        self.queue = iter(enumerate(self.jobs))
        self.current: _File | None = None
        self.ac = as_completed()
        self._capacity_at = -1e9
        self._capacity_value = 4

    # -- files --

    def _finish(self, order: int, result: FileResult) -> None:
        self.results[order] = result
        self.rep.file_done(result)

    def _open(self, order: int, job: FileJob) -> _File | None:
        """Open the outputs of ``job`` (None: skipped or failed, already reported)."""
        settings = self.settings
        result = FileResult.of_job(job, settings, "done")
        started = time.perf_counter()
        # a failure (or Ctrl-C) inside FileOutputs deletes the files it had created; one
        # after it (closing the input) must delete them here
        outputs: FileOutputs | None = None
        try:
            if skip_existing(job, settings):
                result.skip()
                self._finish(order, result)
                return None
            with open_tiff(job.input, axes=settings.axes) as inp:  # the header only
                result.describe(inp, self.scale)
                ny, nx = inp.plane_shape
                plan = plan_for(self.net, inp.plane_shape, settings.tile, settings.overlap)
                result.tiles = len(plan.tiles)
                outputs = FileOutputs(
                    job, inp, settings, self.scale, self.ref, timings=result.timings
                )
        except Exception as exc:
            if outputs is not None:
                outputs.abort()
            self._set_failed(result, exc, started)
            self._finish(order, result)
            return None
        except BaseException:  # Ctrl-C
            if outputs is not None:
                outputs.abort()
            raise
        f = _File(
            order=order,
            job=job,
            result=result,
            plane_pixels=ny * nx,
            outputs=outputs,
            started=started,
        )
        self.files.append(f)
        self.rep.file_started(job, f.n_planes)
        return f

    @staticmethod
    def _set_failed(
        result: FileResult, exc: BaseException | str, started: float, tb: str | None = None
    ) -> None:
        result.fail(exc, tb)
        result.seconds = time.perf_counter() - started

    def _close(self, f: _File) -> None:
        f.closed = True
        f.outputs.abort()  # deletes the partial files (a no-op once committed)
        if f.futures:
            with contextlib.suppress(Exception):
                self.client.cancel(list(f.futures))
            for fut in f.futures:
                self.in_flight.pop(fut, None)
            f.futures.clear()
        if self.current is f:
            self.current = None

    def _fail(self, f: _File, exc: BaseException | str, tb: str | None = None) -> None:
        if f.closed:
            return
        self._close(f)
        f.result.planes_done = f.done
        self._set_failed(f.result, exc, f.started, tb)
        self._finish(f.order, f.result)

    def _complete(self, f: _File) -> None:
        try:
            uncertainty = f.outputs.commit()  # the statistics summed in plane order
        except Exception as exc:
            self._fail(f, exc)
            return
        self._close(f)
        f.result.uncertainty = uncertainty
        f.result.seconds = time.perf_counter() - f.started
        self._finish(f.order, f.result)

    # -- tasks --

    def _capacity(self) -> int:
        if self.window is not None:
            return max(1, self.window)
        now = time.monotonic()
        if now - self._capacity_at > 2.0:  # workers come and go (adaptive clusters)
            threads = sum(self.client.nthreads().values())
            # every thread busy and its next task already waiting
            self._capacity_value = 2 * max(1, threads) + 2
            self._capacity_at = now
        return self._capacity_value

    def fill(self) -> None:
        """Submit plane tasks, file after file, up to the window."""
        while len(self.in_flight) < self._capacity():
            f = self.current
            if f is None or f.closed or f.next_plane >= f.n_planes:
                self.current = None
                nxt = next(self.queue, None)
                if nxt is None:
                    return
                self.current = self._open(*nxt)
                continue
            start = f.next_plane
            indices = tuple(range(start, min(start + self.group, f.n_planes)))
            f.next_plane = indices[-1] + 1
            fut = self.client.submit(
                process_planes,
                str(f.job.input),
                indices,
                self.settings,
                self.ref,
                key=_key(f"{f.job.stem}-p{start}"),
                pure=False,
                retries=self.retries,
                priority=-f.order,  # earlier files first: fewer files open at once
            )
            f.futures.add(fut)
            self.in_flight[fut] = (f, indices)
            self.ac.add(fut)

    def _outcome(self, fut: Any) -> tuple[TaskResult | None, BaseException | None, str | None]:
        try:
            return fut.result(), None, None
        except (Exception, CancelledError) as exc:
            tb = None
            with contextlib.suppress(Exception):
                tb = "".join(traceback.format_tb(fut.traceback()))
            return None, exc, tb

    def _killed_message(self, f: _File, indices: tuple[int, ...], exc: BaseException) -> str:
        planes = f"plane {indices[0]}" if len(indices) == 1 else f"planes {indices}"
        return (
            f"{f.job.input}: the worker running {planes} died too often "
            f"({type(exc).__name__}) — it may need more memory than a worker has: use a "
            "smaller --tile or --batch-size, or workers with more memory"
        )

    def handle(self, fut: Any) -> None:
        entry = self.in_flight.pop(fut, None)
        if entry is None:  # its file already failed (and cancelled its tasks)
            return
        f, indices = entry
        f.futures.discard(fut)
        value, exc, tb = self._outcome(fut)
        fut.release()
        if exc is not None:
            if isinstance(exc, distributed.KilledWorker):
                self._fail(f, self._killed_message(f, indices, exc))
            else:
                self._fail(f, exc, tb)
            return
        assert value is not None
        stats = self.workers.setdefault(value.worker, WorkerStats(value.worker, value.host))
        stats.tasks += 1
        stats.seconds += value.seconds
        if value.error is not None:
            self._fail(f, value.error.one_line())
            return
        try:
            self._write(f, value)
        except Exception as exc:
            self._fail(f, exc)
            return
        stats.planes += len(value.outputs)
        stats.megapixels += len(value.outputs) * f.plane_pixels / 1e6
        if f.done == f.n_planes:
            self._complete(f)

    def _write(self, f: _File, value: TaskResult) -> None:
        result = f.result
        for out in value.outputs:
            result.notices.extend(out.notices)
            for message in out.notices:
                self.rep.notice(message)
            result.add_timings(out.timings)
            f.outputs.write(out)  # at plane out.index; adds its "write" seconds
            result.planes_done = f.done
            self.rep.plane_done(f.job, out.index)

    def interrupt(self) -> None:
        """Cancel every task and delete every partial output."""
        with contextlib.suppress(Exception):
            self.client.cancel(list(self.in_flight))
        self.in_flight.clear()
        for f in self.files:
            if not f.closed:
                self._close(f)
                f.result.status = "interrupted"
                f.result.planes_done = f.done
                f.result.seconds = time.perf_counter() - f.started
                self._finish(f.order, f.result)

    def run(self) -> None:
        self.fill()
        for fut in self.ac:
            self.handle(fut)
            self.fill()
        # every file was opened and finished: nothing may stay in flight
        assert not self.in_flight


def run_batch_distributed(
    jobs: Sequence[FileJob],
    settings: EnhanceSettings,
    model_ref: ModelRef,
    client: Client,
    *,
    reporter: Reporter | None = None,
    planes_per_task: int = 1,
    retries: int = 1,
    window: int | None = None,
    cluster: str = "",
) -> ClusterBatchResult:
    """Process every job on the workers of ``client``; write the outputs here.

    ``model_ref.device`` is the workers' device (see :func:`prepare_workers`). Each task
    is ``planes_per_task`` planes of one file; at most ``window`` tasks are in flight
    (default: twice the workers' threads + 2), files in order, so that only a few output
    files are open at a time. ``retries``: reruns of a task that raised an unexpected
    exception (a lost worker is handled by Dask and does not count). Events go to
    ``reporter`` as in :func:`cvdm_cli.run.run_batch` (planes complete in any order;
    no per-step ``sampling`` events). Ctrl-C cancels the tasks, deletes partial outputs
    and returns with ``interrupted=True``.
    """
    settings.validate()
    rep = reporter or Reporter()
    run = _Run(
        jobs,
        settings,
        model_ref,
        client,
        rep,
        planes_per_task=planes_per_task,
        retries=retries,
        window=window,
    )
    check_tiling(settings, run.net)
    batch = ClusterBatchResult(
        files=[],
        seconds=0.0,
        device=model_ref.device,
        precision=settings.precision,
        model=model_ref.name or Path(model_ref.path).stem,
        settings=settings,
        cluster=cluster,
    )
    started = time.perf_counter()
    rep.batch_started(jobs)
    try:
        run.run()
    except KeyboardInterrupt:
        run.interrupt()
        batch.interrupted = True
    finally:
        if not batch.interrupted:  # an unexpected error: leave no partial file behind
            with contextlib.suppress(Exception):
                client.cancel(list(run.in_flight))
            for f in run.files:
                if not f.closed:
                    f.outputs.abort()
    batch.seconds = time.perf_counter() - started
    batch.files = [run.results[k] for k in sorted(run.results)]
    batch.workers = sorted(run.workers.values(), key=lambda w: w.name)
    return batch
