"""Temp files beside the final path, and sealing a finished file: fsync, size, sha256.
Temp files are dot-files `.{final name}.tmp-{token}[.{suffix}]` in the final directory, so
`os.replace` is a same-filesystem rename and `remove_stale_temps` recognises a crash's leftovers.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
import time
from pathlib import Path

READ_CHUNK = 4 << 20
TEMP_MARK = ".tmp-"
_TEMP_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{12}(\..*)?$")


class TempFiles:
    """Creates temp files beside `final_path` and removes every one it still owns on close."""

    def __init__(self, final_path: Path):
        self.final_path = Path(final_path)
        self.directory = self.final_path.parent
        self.token = secrets.token_hex(6)
        self._owned: list[Path] = []

    def new(self, suffix: str = "") -> Path:
        """A fresh, empty file (created exclusively) beside the final path."""
        name = f".{self.final_path.name}{TEMP_MARK}{self.token}"
        if suffix:
            name += f".{suffix}"
        path = self.directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        self._owned.append(path)
        return path

    def discard(self, path: Path) -> None:
        """Remove one temp file now (it is no longer needed)."""
        _unlink(path)
        self._forget(path)

    def publish(self, path: Path) -> Path:
        """Atomically move a sealed temp file onto the final path."""
        os.replace(path, self.final_path)
        self._forget(path)
        fsync_directory(self.directory)
        return self.final_path

    def cleanup(self) -> None:
        for path in self._owned:
            _unlink(path)
        self._owned.clear()

    def _forget(self, path: Path) -> None:
        try:
            self._owned.remove(path)
        except ValueError:
            pass

    def __enter__(self) -> TempFiles:
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


def sink_into(path: Path, sink) -> None:
    """Run a Polars sink (`sink(file)`) into `path` through a file opened here. Given a path,
    a sink that fails can still be opening it on Polars' I/O threads after it has raised (a
    moment later) - re-creating a temp file that was already removed."""
    with open(path, "wb") as out:
        sink(out)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Task(threading.Thread):
    """Run `fn` in a thread, keeping its result or error for the caller."""

    def __init__(self, fn, name: str):
        super().__init__(name=name, daemon=True)
        self.fn = fn
        self.result = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # re-raised by the caller in seal()
            self.error = exc


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BackgroundFlush:
    """While a file is being written (by a Polars sink, zipfile, ...), `fdatasync` it every
    `interval` seconds from a thread, so the kernel writes the data out alongside the work
    and the final fsync has little left to do (see docs/performance.md)."""

    def __init__(self, path: Path, interval: float = 0.05):
        self.path = path
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None

    def _loop(self, fd: int) -> None:
        while not self._stop.wait(self.interval):
            try:
                os.fdatasync(fd)
            except OSError:
                return  # best effort: the final fsync in seal() is what counts

    def __enter__(self) -> BackgroundFlush:
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return self
        self._thread = threading.Thread(target=self._loop, args=(self._fd,), name="pageferry-flush", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._fd is not None:
            os.close(self._fd)


def digest(path: Path, *, count_newlines: bool = False) -> tuple[int, str, int]:
    """(bytes, sha256 hex, number of b"\\n") of a file, read in large chunks."""
    sha = hashlib.sha256()
    size = 0
    newlines = 0
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            chunk = view[:n]
            sha.update(chunk)
            size += n
            if count_newlines:
                newlines += buf.count(b"\n", 0, n)
    return size, sha.hexdigest(), newlines


def seal(path: Path, *, sync: bool, count_newlines: bool = False, rows_fn=None) -> tuple[int, str, int | None]:
    """Make `path` durable (optional) and describe it: (bytes, sha256, rows).

    rows: `rows_fn()` when given, else the newline count when `count_newlines`, else None.
    The fsync and `rows_fn` run in threads (both release the GIL) while this one hashes.
    """
    tasks = []
    if sync:
        tasks.append(_Task(lambda: fsync_path(path), "pageferry-fsync"))
    counter = _Task(rows_fn, "pageferry-rows") if rows_fn is not None else None
    if counter is not None:
        tasks.append(counter)
    for task in tasks:
        task.start()
    try:
        size, sha, newlines = digest(path, count_newlines=count_newlines)
    finally:
        for task in tasks:
            task.join()
    for task in tasks:
        if task.error is not None:
            raise task.error
    if counter is not None:
        rows = counter.result
    else:
        rows = newlines if count_newlines else None
    return size, sha, rows


def remove_stale_temps(directory: Path, older_than: float = 3600.0) -> list[Path]:
    """Delete exporter temp files (`.{name}.tmp-{12 hex}[.suffix]`) left in `directory` by a
    process that died, when they were last modified more than `older_than` seconds ago."""
    removed: list[Path] = []
    cutoff = time.time() - older_than
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not _TEMP_NAME.match(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except FileNotFoundError:
            pass
    return removed
