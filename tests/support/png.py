"""Decode the PNG screenshots Chromium takes (8-bit RGB or RGBA, not interlaced) with the standard library."""

from __future__ import annotations

import struct
import zlib
from collections import Counter

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {2: 3, 6: 4}  # colour type: bytes per pixel at bit depth 8


def decode(png: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the unfiltered rows (RGB(A) bytes) of a PNG image."""
    assert png.startswith(SIGNATURE), "not a PNG"
    position = len(SIGNATURE)
    header = b""
    data = bytearray()
    while position < len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        kind = png[position + 4 : position + 8]
        body = png[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            data += body
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8, depth
    assert colour in CHANNELS, colour
    assert interlace == 0, interlace
    step = CHANNELS[colour]
    raw = zlib.decompress(bytes(data))
    stride = width * step
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind = raw[start]
        row = bytearray(raw[start + 1 : start + 1 + stride])
        _unfilter(kind, row, previous, step)
        rows.append(bytes(row))
        previous = row
    return width, height, rows


def colours(png: bytes) -> Counter[tuple[int, int, int]]:
    """How many pixels of each RGB colour the image holds."""
    width, _, rows = decode(png)
    step = len(rows[0]) // width
    counts: Counter[tuple[int, int, int]] = Counter()
    for row in rows:
        for x in range(0, len(row), step):
            counts[(row[x], row[x + 1], row[x + 2])] += 1
    return counts


def _unfilter(kind: int, row: bytearray, previous: bytearray, step: int) -> None:
    for i in range(len(row)):
        left = row[i - step] if i >= step else 0
        up = previous[i]
        corner = previous[i - step] if i >= step else 0
        if kind == 1:
            row[i] = (row[i] + left) & 0xFF
        elif kind == 2:
            row[i] = (row[i] + up) & 0xFF
        elif kind == 3:
            row[i] = (row[i] + (left + up) // 2) & 0xFF
        elif kind == 4:
            row[i] = (row[i] + _paeth(left, up, corner)) & 0xFF


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c
