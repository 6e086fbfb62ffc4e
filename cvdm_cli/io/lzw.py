"""TIFF LZW decoding without imagecodecs: a pure-Python fallback for tifffile.

tifffile decodes LZW (TIFF compression 5, the default of many microscopes and of Fiji's
"LZW" export) only through the optional imagecodecs package. :func:`install_lzw_fallback`
registers :func:`lzw_decode` with tifffile when imagecodecs is absent, so such files still
open (about 50x slower than imagecodecs: pip install imagecodecs for speed).
"""

from __future__ import annotations

from typing import Any

import tifffile

__all__ = ["install_lzw_fallback", "lzw_decode"]


def lzw_decode(data: bytes, *, out: Any = None) -> bytes:
    """Decode TIFF LZW (MSB-first codes of 9-12 bits, early change; TIFF 6.0 section 13).

    A pure-Python fallback used only when imagecodecs is not installed (it is ~50x slower).
    ``out`` is the expected decoded size in bytes (as tifffile passes it) or ignored.
    """
    src = bytes(data) + b"\x00\x00\x00"
    nbits = (len(data)) * 8
    result = bytearray()
    table: list[bytes] = [bytes((i,)) for i in range(256)] + [b"", b""]
    width, pos, prev = 9, 0, b""
    limit = out if isinstance(out, int) and out > 0 else None
    while pos + width <= nbits:
        b = pos >> 3
        chunk = (src[b] << 16) | (src[b + 1] << 8) | src[b + 2]
        code = (chunk >> (24 - width - (pos & 7))) & ((1 << width) - 1)
        pos += width
        if code == 256:  # clear code
            del table[258:]
            width, prev = 9, b""
            continue
        if code == 257:  # end of information
            break
        if code < len(table):
            entry = table[code]
            if prev:
                table.append(prev + entry[:1])
        elif prev and code == len(table):  # the KwKwK case
            entry = prev + prev[:1]
            table.append(entry)
        else:
            msg = f"corrupt LZW stream (code {code} with table size {len(table)})"
            raise ValueError(msg)
        result += entry
        prev = entry
        if limit is not None and len(result) >= limit:
            break
        # early change: the code width grows one code before the table fills
        n = len(table) + 1
        width = 12 if n >= 2048 else 11 if n >= 1024 else 10 if n >= 512 else 9
    return bytes(result)


def install_lzw_fallback() -> None:
    """Let tifffile decode LZW with :func:`lzw_decode` when imagecodecs is missing.

    Idempotent (a decoder already registered for code 5 is kept); :mod:`cvdm_cli.io.tiff`
    calls it on import.
    """
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        codecs = getattr(tifffile.TIFF.DECOMPRESSORS, "_codecs", None)
        if isinstance(codecs, dict):
            codecs.setdefault(5, lzw_decode)
