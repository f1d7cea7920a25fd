"""The TIFF block check: is every block of a written TIFF inside the file?

GDAL reports a GeoTIFF block it could not write (full disk, quota, file size limit) only on
stderr and carries on, so a closed file is checked here before it is renamed onto its output
(:func:`tiff_block_problem`).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

_TIFF_ARRAY_TYPES = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8
_TIFF_OFFSET_TAGS = (324, 273)  # TileOffsets, StripOffsets
_TIFF_COUNT_TAGS = (325, 279)  # TileByteCounts, StripByteCounts
_MAX_DIRECTORIES = 4096


def tiff_block_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the TIFF at ``path`` is incomplete, or None when every block's bytes are in the file.

    Walks every image file directory (full resolution, overviews, masks) of a classic or BigTIFF
    file and checks that each tile or strip has a nonzero byte count and ends inside the file,
    and that every directory lies inside it. A write GDAL could not complete (full disk, quota,
    file size limit) leaves a block with no bytes or a directory past the end of the file; GDAL
    itself reports that only on stderr. Reads only the directories (a few kB per 10,000 tiles).

    Args:
        path: A TIFF written with ``SPARSE_OK`` off (GDAL's default: every block is written).

    Returns:
        A short description of the first problem, or None.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None or len(head) < 8:
            return "no TIFF header"
        (version,) = struct.unpack(order + "H", head[2:4])
        if version == 42:
            big, ifd = False, struct.unpack(order + "I", head[4:8])[0]
        elif version == 43 and len(head) >= 16:
            big, ifd = True, struct.unpack(order + "Q", head[8:16])[0]
        else:
            return "no TIFF header"
        count_fmt, entry_fmt, entry_size, next_fmt = (
            ("Q", "HHQ", 20, "Q") if big else ("H", "HHI", 12, "I")
        )
        count_size, next_size = struct.calcsize(count_fmt), struct.calcsize(next_fmt)
        head_size = struct.calcsize(entry_fmt)
        seen: set[int] = set()
        while ifd:
            number = len(seen) + 1
            if ifd in seen or number > _MAX_DIRECTORIES:
                return "its directories form a loop"
            seen.add(ifd)
            if ifd + count_size > size:
                return f"directory {number} lies past the end of the file"
            fh.seek(ifd)
            (n,) = struct.unpack(order + count_fmt, fh.read(count_size))
            table = fh.read(n * entry_size + next_size)
            if len(table) < n * entry_size + next_size:
                return f"directory {number} is cut off at the end of the file"
            arrays: dict[int, np.ndarray] = {}
            for i in range(n):
                entry = table[i * entry_size : (i + 1) * entry_size]
                tag, typ, cnt = struct.unpack(order + entry_fmt, entry[:head_size])
                if tag not in _TIFF_OFFSET_TAGS + _TIFF_COUNT_TAGS:
                    continue
                code = _TIFF_ARRAY_TYPES.get(typ)
                if code is None:
                    return f"directory {number} has an unreadable block table"
                dt = np.dtype(order + code)
                inline = entry[head_size:]
                nbytes = int(cnt) * dt.itemsize
                if nbytes <= len(inline):
                    raw = inline[:nbytes]
                else:
                    (where,) = struct.unpack(order + ("Q" if big else "I"), inline)
                    if where + nbytes > size:
                        return f"the block table of directory {number} lies past the end"
                    fh.seek(where)
                    raw = fh.read(nbytes)
                arrays[tag] = np.frombuffer(raw, dtype=dt).astype(np.uint64)
            offsets = next((arrays[t] for t in _TIFF_OFFSET_TAGS if t in arrays), None)
            counts = next((arrays[t] for t in _TIFF_COUNT_TAGS if t in arrays), None)
            if offsets is None or counts is None or offsets.shape != counts.shape:
                return f"directory {number} has no complete block table"
            empty = np.flatnonzero((counts == 0) | (offsets == 0))
            if empty.size:
                return f"block {int(empty[0])} of directory {number} was never written"
            if offsets.size and int((offsets + counts).max()) > size:
                return f"a block of directory {number} ends past the end of the file"
            (ifd,) = struct.unpack(order + next_fmt, table[n * entry_size :])
    return None
