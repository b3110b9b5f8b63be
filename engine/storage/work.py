"""A job's work directory (shards and their ledger, job.json, incremental.json) kept in the
shared store as well as on local disk, so another instance - or a Dask worker on another
host - finds what this one has done.

- Pool processes call `upload_shard` right after a shard is written and before their piece
  reports it: every shard the coordinator knows of is in the store. A shard is one object, its
  SHA-256 in the object's metadata (not a sidecar object): it appears in the store whole, with
  its checksum, or not at all - and costs one request.
- The coordinator's `WorkCopy` brings the store's files into a local work directory that
  lacks them (a task resumed by another instance starts with an empty one), checking each
  shard against its checksum as `list_shards` would, and stores the local files the store
  lacks (a retry's kept shards, job.json).
With RESULT_STORE unset (the local store) every call here returns at once."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from engine.shards import NAME, TEMP_PREFIX, checksum_path, drop_shard
from engine.storage.base import ResultStore, open_result_store
from engine.storage.config import ResultStoreError, StoreConfig
from engine.storage.layout import work_path

log = logging.getLogger("pageferry.storage")

TRANSFERS = 8  # files moved at once (a request each; boto3's client is thread-safe)
TOP_FILES = ("job.json", "incremental.json")
CHECKSUM = "sha256"  # the shard object's metadata key holding its checksum


@dataclass(frozen=True)
class WorkStore:
    """Where one job's work lives in the shared store; picklable (it travels to pool
    processes inside WorkerJob, and can travel to a Dask worker the same way)."""

    config: StoreConfig
    job_key: str  # the job's id: the task id for the service


def upload_shard(work: WorkStore, path: Path) -> None:
    """Store a finished shard with its checksum (write_shard's sidecar). Callable from any
    process; raises ResultStoreError."""
    checksum = checksum_path(path).read_text().strip()
    open_result_store(work.config).upload(path, work_path(work.job_key, f"shards/{path.name}"), {CHECKSUM: checksum})


def _span(relative: str) -> tuple[int, tuple[int, int], tuple[int, int]] | None:
    """(source, first (unit, page), last (unit, page)) of the shard `relative` names, or None."""
    match = NAME.match(relative.removeprefix("shards/")) if relative.startswith("shards/") else None
    if match is None:
        return None
    source, u1, p1, u2, p2 = (int(g) for g in match.groups())
    return source, (u1, p1), (u2, p2)


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and a[1] <= b[2] and b[1] <= a[2]


def synced(relative: str) -> bool:
    """Whether a file of the work directory is one the store keeps (not temp files, not the
    local kept.json marker)."""
    folder, _, name = relative.rpartition("/")
    if folder == "":
        return name in TOP_FILES
    if folder == "shards":
        return NAME.match(name) is not None  # the checksum sidecar travels as the shard's metadata
    if folder == "fanout":  # a dependent source's parent ids digest (coordinator._same_ids)
        return re.fullmatch(r"s\d{3}\.sha256", name) is not None
    if folder == "uploads":  # the service's uploaded ids files
        return re.fullmatch(r"source-\d+\.csv", name) is not None
    return False


class WorkCopy:
    """The coordinator's side: one job's work directory and its copy in the store."""

    def __init__(self, config: StoreConfig | None, job_key: str, workdir: Path):
        self.store: ResultStore = open_result_store(config)
        self.work = WorkStore(config, job_key) if config is not None else None
        self.workdir = workdir
        self.prefix = work_path(job_key) if config is not None else ""
        self._remote: dict[str, int] = {}  # what the store held at the last pull

    # ------------------------------------------------------------ store -> local
    def pull(self) -> int:
        """Bring every file of the store's copy the local directory lacks; returns how many
        shards came. Before the coordinator reads job.json, incremental.json and the ledger."""
        if not self.store.shared:
            return 0
        self._remote = remote = {k: v for k, v in self.store.names(self.prefix).items() if synced(k)}
        local = set(self._local())
        missing = [rel for rel in remote if rel not in local]
        shards = [rel.removeprefix("shards/") for rel in missing if rel.startswith("shards/")]
        others = [rel for rel in missing if not rel.startswith("shards/")]
        self._each(lambda rel: self.store.download(self.prefix + rel, self.workdir / rel), others)
        self._drop_superseded(local, remote)
        return self._fetch_shards(shards)

    def _drop_superseded(self, local: set[str], remote: dict[str, int]) -> None:
        """A local shard the store never got (this instance died between writing and storing
        it) whose pages another instance has since stored in a shard of its own: the store's
        wins - two shards holding one page would make the ledger overlap."""
        stored = [span for span in map(_span, remote) if span is not None]
        for relative in local - set(remote):
            mine = _span(relative)
            if mine is not None and any(_overlap(mine, other) for other in stored):
                drop_shard(self.workdir / relative, "another instance stored its pages in RESULT_STORE since")

    def sync_shards(self, names: Collection[str] | None = None) -> int:
        """After a pool process died, and before shards are read: bring the store's shards
        (only `names`, when given) that the local folder lacks - a piece that ran elsewhere (a
        Dask worker on another host) may have stored its shard only there - and store the
        local shards the store lacks (a process killed between writing a shard and storing
        it: the ledger counts the shard, so the store must hold it too). Returns how many came."""
        if not self.store.shared:
            return 0
        remote = {f"shards/{k}": v for k, v in self.store.names(self.prefix + "shards/").items()}
        wanted = [rel.removeprefix("shards/") for rel in remote if synced(rel) and not (self.workdir / rel).exists()]
        if names is not None:
            wanted = [name for name in wanted if name in names]
        self._remote = {k: v for k, v in self._remote.items() if not k.startswith("shards/")} | remote
        fetched = self._fetch_shards(wanted)
        local_only = [rel for rel in self._local() if rel.startswith("shards/") and rel not in remote]
        self._each(lambda rel: self._push(self.workdir / rel), local_only)
        return fetched

    def _fetch_shards(self, names: list[str]) -> int:
        (self.workdir / "shards").mkdir(parents=True, exist_ok=True)
        fetched = self._each(self._fetch_shard, names)
        if fetched:
            log.info("took %d shards of %s from RESULT_STORE", fetched, self.workdir.name)
        return fetched

    def _fetch_shard(self, name: str) -> bool:
        """One shard, placed as write_shard places one: its checksum sidecar first, then the
        shard renamed into place - only when its bytes match the checksum it was stored with."""
        shards_dir = self.workdir / "shards"
        temp = shards_dir / f"{TEMP_PREFIX}pull-{os.getpid()}-{name}"
        try:
            actual, metadata = self.store.download(f"{self.prefix}shards/{name}", temp)
            expected = metadata.get(CHECKSUM)
            if expected is None or actual != expected:
                why = "no checksum" if expected is None else "a wrong checksum"
                log.warning("RESULT_STORE holds shard %s with %s; its pages will be fetched again", name, why)
                return False
            final = shards_dir / name
            checksum_path(final).write_text(expected)
            os.replace(temp, final)
            return True
        finally:
            temp.unlink(missing_ok=True)

    # ------------------------------------------------------------ local -> store
    def push_missing(self) -> int:
        """Store the local files the store's copy lacks (as of the last pull): a work
        directory that existed before (a retry's kept shards), job.json, incremental.json."""
        if not self.store.shared:
            return 0
        missing = [rel for rel in self._local() if rel not in self._remote]
        self._each(lambda rel: self._push(self.workdir / rel), missing)
        return len(missing)

    def push(self, path: Path) -> None:
        """Store one file of the work directory (job.json, a fan-out marker) as it is now."""
        if self.store.shared:
            self._push(path)

    def _push(self, path: Path) -> bool:
        relative = path.relative_to(self.workdir).as_posix()
        if relative.startswith("shards/"):
            assert self.work is not None  # a shared store
            if not checksum_path(path).exists():
                return False  # not a finished shard: list_shards drops it, its pages are fetched again
            upload_shard(self.work, path)
        else:
            self.store.upload(path, self.prefix + relative)
        self._remote[relative] = path.stat().st_size
        return True

    def forget(self, names: Iterable[str]) -> None:
        """Delete shards from the store as well (fetched for ids a parent no longer has): a
        later pull must not bring them back."""
        if not self.store.shared:
            return
        for name in names:
            self.store.remove(f"{self.prefix}shards/{name}")
            self._remote.pop(f"shards/{name}", None)

    def drop(self) -> None:
        """The job's whole copy in the store: its work is done (its local directory goes too).
        Housekeeping after the result exists: a failure is logged, not raised."""
        if not self.store.shared:
            return
        try:
            self.store.remove(self.prefix)
        except ResultStoreError as exc:
            log.warning("%s", exc)
        self._remote = {}

    # ------------------------------------------------------------ helpers
    def _local(self) -> list[str]:
        found = []
        for folder in ("", "shards", "fanout", "uploads"):
            directory = self.workdir / folder
            try:
                entries = os.listdir(directory)
            except OSError:
                continue
            for entry in entries:
                relative = f"{folder}/{entry}" if folder else entry
                if synced(relative) and (directory / entry).is_file():
                    found.append(relative)
        return found

    @staticmethod
    def _each(action, items: list[str]) -> int:
        """Run `action` on every item, a few at once; how many returned a true value."""
        if not items:
            return 0
        if len(items) == 1:
            return int(bool(action(items[0])))
        with ThreadPoolExecutor(max_workers=min(TRANSFERS, len(items)), thread_name_prefix="result-store") as pool:
            return sum(1 for done in pool.map(action, items) if done)
