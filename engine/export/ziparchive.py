"""Adding whole files and small texts to a ZipFile with chosen timestamps and levels."""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from pathlib import Path

FIXED_DATE = (1980, 1, 1, 0, 0, 0)
COPY_CHUNK = 1 << 20


def now_date_time() -> tuple[int, int, int, int, int, int]:
    return time.localtime()[:6]


def _info(arcname: str, compress_type: int, level: int | None, date_time) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, date_time=date_time)
    info.compress_type = compress_type
    # The attribute ZipFile.open(zinfo, "w") reads (3.11+); private, so typeshed omits it.
    info._compresslevel = level  # type: ignore[attr-defined]
    if hasattr(info, "compress_level"):
        info.compress_level = level
    info.external_attr = 0o644 << 16
    return info


def add_file(
    zf: zipfile.ZipFile, src: Path, arcname: str, *, compress_type: int, level: int | None = None, date_time=FIXED_DATE
) -> None:
    """Copy a file into the archive. Its size is known up front, so ZIP64 records are
    written only when the entry needs them (as Excel expects)."""
    info = _info(arcname, compress_type, level, date_time)
    info.file_size = os.path.getsize(src)
    with open(src, "rb") as fin, zf.open(info, "w") as fout:
        shutil.copyfileobj(fin, fout, COPY_CHUNK)


def add_bytes(
    zf: zipfile.ZipFile,
    data: bytes,
    arcname: str,
    *,
    compress_type: int,
    level: int | None = None,
    date_time=FIXED_DATE,
) -> None:
    zf.writestr(_info(arcname, compress_type, level, date_time), data)
