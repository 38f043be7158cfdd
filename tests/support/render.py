"""Checks on rendered drawings."""

from __future__ import annotations

import struct
import zlib


def blank(png: bytes) -> bool:
    """True when a PNG holds one flat colour (PIL when present, else its raw bytes via zlib)."""
    try:
        from PIL import Image
    except ImportError:
        data, pos = b"", 8
        while pos < len(png):
            length, tag = struct.unpack(">I4s", png[pos : pos + 8])
            if tag == b"IDAT":
                data += png[pos + 8 : pos + 8 + length]
            pos += 12 + length
        # A flat image filters to a handful of byte values (filter types, the colour, zero
        # deltas); anti-aliased text and lines give many more.
        return len(set(zlib.decompress(data))) <= 8
    import io

    low, high = Image.open(io.BytesIO(png)).convert("L").getextrema()
    return low == high
