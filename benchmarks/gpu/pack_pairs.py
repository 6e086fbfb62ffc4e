"""Lossless, compact transport of simulated training pairs to a machine without the simulator.

The GPU machine used for training has no network and no ``microsim``, and what travels to
it is capped (64 MiB), so the pairs of ``cvdm simulate`` are packed here and unpacked
there into the same TIFF folders. Lossless: each integer-valued image (uint16 LR, the
HR's float32 photon counts) is stored as zigzag row differences split into byte planes
and compressed with lzma (about 8.5 bits per HR pixel, which is its Poisson noise).

    python benchmarks/gpu/pack_pairs.py pack data.cvdmpack phys_lr=sim/lr hr=sim/hr --n 560
    python benchmarks/gpu/pack_pairs.py unpack data.cvdmpack /tmp/data   # -> /tmp/data/<name>/
"""

from __future__ import annotations

import argparse
import json
import lzma
import struct
import sys
from pathlib import Path

import numpy as np
import tifffile

MAGIC = b"CVDMPACK1"


def _encode(stack: np.ndarray) -> bytes:
    """(n, h, w) integer-valued array -> lzma bytes of zigzag row differences."""
    as_int = stack.astype(np.int64)
    if not np.array_equal(as_int, stack) or as_int.min() < 0 or as_int.max() > 65535:
        raise ValueError("only integer values in [0, 65535] pack losslessly")
    diff = np.diff(as_int, axis=-1, prepend=0)
    zigzag = ((diff << 1) ^ (diff >> 63)).astype(np.uint32)
    planes = np.stack([zigzag & 255, (zigzag >> 8) & 255, zigzag >> 16]).astype(np.uint8)
    return lzma.compress(planes.tobytes(), preset=6)


def _decode(blob: bytes, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    planes = np.frombuffer(lzma.decompress(blob), np.uint8).reshape((3, *shape)).astype(np.int64)
    zigzag = planes[0] | (planes[1] << 8) | (planes[2] << 16)
    diff = (zigzag >> 1) ^ -(zigzag & 1)
    return np.cumsum(diff, axis=-1).astype(dtype)


def pack(out: Path, folders: dict[str, Path], n: int | None) -> None:
    header: dict = {"entries": []}
    blobs = []
    for name, folder in folders.items():
        files = sorted(folder.glob("*.tif"))[:n]
        if not files:
            sys.exit(f"error: no .tif files in {folder}")
        stack = np.stack([tifffile.imread(f) for f in files])
        blob = _encode(stack)
        header["entries"].append(
            {
                "name": name,
                "files": [f.name for f in files],
                "shape": list(stack.shape),
                "dtype": str(stack.dtype),
                "bytes": len(blob),
            }
        )
        blobs.append(blob)
        size_mb = len(blob) / 1e6
        print(f"{name}: {len(files)} images {stack.shape[1:]} {stack.dtype} -> {size_mb:.1f} MB")
    head = json.dumps(header).encode()
    with open(out, "wb") as fh:
        fh.write(MAGIC + struct.pack("<Q", len(head)) + head)
        for blob in blobs:
            fh.write(blob)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


def unpack(src: Path, dest: Path) -> None:
    with open(src, "rb") as fh:
        if fh.read(len(MAGIC)) != MAGIC:
            sys.exit(f"error: {src} is not a cvdm pack")
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
        for entry in header["entries"]:
            stack = _decode(fh.read(entry["bytes"]), tuple(entry["shape"]), entry["dtype"])
            folder = dest / entry["name"]
            folder.mkdir(parents=True, exist_ok=True)
            for name, image in zip(entry["files"], stack, strict=True):
                tifffile.imwrite(folder / name, image)
            print(f"{entry['name']}: {len(stack)} images -> {folder}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("out", type=Path)
    p.add_argument("folders", nargs="+", help="name=folder of .tif files")
    p.add_argument("--n", type=int, default=None, help="first N files (sorted) of each")
    u = sub.add_parser("unpack")
    u.add_argument("src", type=Path)
    u.add_argument("dest", type=Path)
    args = ap.parse_args()
    if args.cmd == "pack":
        folders = dict(item.split("=", 1) for item in args.folders)
        pack(args.out, {k: Path(v) for k, v in folders.items()}, args.n)
    else:
        unpack(args.src, args.dest)


if __name__ == "__main__":
    main()
