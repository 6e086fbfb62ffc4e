"""I/O benchmark: memory must stay flat in the stack size, and throughput be set by the disk.

For each size (GB of uint16 input) a synthetic OME BigTIFF Z stack is written to a temporary
folder, evicted from the page cache, and processed plane by plane exactly as ``cvdm
enhance`` will: read -> percentile-normalise -> tile -> identity x2 upsample (np.repeat, a
stand-in for the model) -> stitch -> denormalise -> write float32 (8x the input bytes).
Each size runs in a fresh subprocess, which reports its peak RSS (ru_maxrss) and timings.
A raw sequential write of the disk (os.write + fsync) is measured as the baseline.

    .venv/bin/python benchmarks/io.py                    # quick: 0.05 GB
    .venv/bin/python benchmarks/io.py --sizes 0.25,1,4   # the issue's figures (~45 GB disk)

Needs free disk space for input + output of the largest size (9x its GB, plus 5%); sizes
that do not fit are skipped with a message. Everything written is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _generate(path: Path, nbytes: float, plane: int) -> dict:
    """Write a uint16 OME BigTIFF of about ``nbytes`` (planes of plane x plane)."""
    import tifffile

    n = max(1, round(nbytes / (plane * plane * 2)))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:plane, 0:plane]
    base = (1000 + 800 * np.sin(yy / 37.0) * np.cos(xx / 23.0)).astype(np.float32)
    noise = rng.normal(0, 50, size=(8, plane, plane)).astype(np.float32)

    def planes():
        for i in range(n):
            yield np.clip(base + noise[i % 8] + 10 * (i % 50), 0, 65535).astype(np.uint16)

    t0 = time.perf_counter()
    tifffile.imwrite(
        path,
        planes(),
        shape=(n, plane, plane),
        dtype=np.uint16,
        bigtiff=True,
        ome=True,
        photometric="minisblack",
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1},
    )
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # read it back from disk
    finally:
        os.close(fd)
    return {"planes": n, "seconds": time.perf_counter() - t0}


def _process(src: Path, dst: Path, tile: int, overlap: int) -> dict:
    """The plane-by-plane pipeline; returns timings and peak RSS of this process."""
    from cvdm_cli.core.normalize import denormalize, percentile_normalize
    from cvdm_cli.core.tiling import plan_tiles
    from cvdm_cli.io.tiff import OutputTiff, open_tiff, output_spec

    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t_read = t_compute = t_write = 0.0
    t0 = time.perf_counter()
    with open_tiff(src) as inp:
        shape, axes, px = output_spec(inp, 2)
        plan = plan_tiles(inp.plane_shape, tile=tile, overlap=overlap, scale=2)
        with OutputTiff(dst, shape=shape, axes=axes, pixel_size=px, unit=inp.unit) as out:
            for i in range(inp.n_planes):
                a = time.perf_counter()
                plane = inp.read_plane(i)
                b = time.perf_counter()
                norm, params = percentile_normalize(plane)
                padded = plan.pad_lr(norm)
                # a stand-in "model" per tile (nearest 2x), pasted into one plane buffer:
                # the I/O and memory of the real pipeline, without its sampling
                acc = np.zeros(plan.padded_out_shape, np.float32)
                for t in plan:
                    window = plan.cut_lr(padded, t)
                    up = np.repeat(np.repeat(window, 2, axis=0), 2, axis=1)
                    acc[t.out_slices] = up[t.crop_slices]
                result = denormalize(plan.crop_out(acc), params)
                c = time.perf_counter()
                out.write_plane(result)
                d = time.perf_counter()
                t_read += b - a
                t_compute += c - b
                t_write += d - c
            c = time.perf_counter()
        t_write += time.perf_counter() - c  # fsync + rename at commit
        n_planes, in_bytes = inp.n_planes, src.stat().st_size
    total = time.perf_counter() - t0
    return {
        "planes": n_planes,
        "in_bytes": in_bytes,
        "out_bytes": dst.stat().st_size,
        "seconds": total,
        "read_s": t_read,
        "compute_s": t_compute,
        "write_s": t_write,
        "rss_after_imports_mb": rss_start / 1024,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "layout": out.layout.kind + ("/bigtiff" if out.layout.bigtiff else ""),
    }


def _disk_write_baseline(folder: Path, nbytes: int) -> float:
    """Sequential write speed (MB/s) of the folder's disk, fsync included."""
    path = folder / "baseline.bin"
    block = np.random.default_rng(1).bytes(16 << 20)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        written = 0
        while written < nbytes:
            written += os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - t0
    path.unlink()
    return written / 1e6 / seconds


def _child(args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        msg = f"benchmark step {args[0]} failed"
        raise SystemExit(msg)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.05", help="input sizes in GB, e.g. 0.25,1,4")
    parser.add_argument("--plane", type=int, default=1024, help="input plane side (pixels)")
    parser.add_argument("--tile", type=int, default=512, help="tile size (output pixels)")
    parser.add_argument("--overlap", type=int, default=32, help="tile overlap (output px)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="scratch folder")
    parser.add_argument("--baseline-gb", type=float, default=1.0, help="disk baseline size")
    args = parser.parse_args(argv)
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    scratch_root = Path(args.dir)

    free = shutil.disk_usage(scratch_root).free
    print(f"scratch {scratch_root}: {free / 1e9:.1f} GB free")
    work = Path(tempfile.mkdtemp(prefix="cvdm-io-bench-", dir=scratch_root))
    rows = []
    try:
        base = _disk_write_baseline(work, int(args.baseline_gb * 1e9))
        print(f"disk sequential write baseline: {base:.0f} MB/s ({args.baseline_gb:g} GB, fsync)")
        for gb in sizes:
            need = gb * 1e9 * 9 * 1.05  # input + 8x float32 output at 2x, plus 5%
            free = shutil.disk_usage(work).free
            if need > free:
                print(f"{gb:g} GB: skipped, needs {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free")
                continue
            src, dst = work / f"in-{gb:g}.ome.tif", work / f"out-{gb:g}.tif"
            gen = _child(["--_generate", str(src), str(gb * 1e9), str(args.plane)])
            res = _child(["--_process", str(src), str(dst), str(args.tile), str(args.overlap)])
            src.unlink()
            dst.unlink()
            res["gb"] = gb
            res["gen_s"] = gen["seconds"]
            rows.append(res)
            mb_in = res["in_bytes"] / 1e6 / res["seconds"]
            mb_out = res["out_bytes"] / 1e6 / res["seconds"]
            print(
                f"{gb:g} GB: {res['planes']} planes, {res['seconds']:.1f} s "
                f"(read {res['read_s']:.1f} / compute {res['compute_s']:.1f} / "
                f"write {res['write_s']:.1f}), {mb_in:.0f} MB/s in, {mb_out:.0f} MB/s out, "
                f"peak RSS {res['peak_rss_mb']:.0f} MB "
                f"(after imports {res['rss_after_imports_mb']:.0f} MB), "
                f"output {res['layout']} {res['out_bytes'] / 1e9:.2f} GB"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if len(rows) >= 2:
        ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
        print(
            f"peak RSS {rows[-1]['gb']:g} GB / {rows[0]['gb']:g} GB = {ratio:.2f} (target <= 1.2)"
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_generate":
        out = _generate(Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
        print(json.dumps(out))
    elif len(sys.argv) > 1 and sys.argv[1] == "--_process":
        out = _process(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        print(json.dumps(out))
    else:
        sys.exit(main())
