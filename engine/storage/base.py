"""The result store's interface, and its default: local disk only.

Local disk (DATA_DIR) is always the working copy - pool processes write shards there, the
export reads them there, downloads are served from there. A shared store (S3) is the durable
copy every instance sees: what one instance wrote, another can resume from or serve. Paths in
the store are relative to RESULT_STORE and '/'-separated (engine/storage/layout.py)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from config import Settings
from engine.storage.config import StoreConfig, store_config
from engine.storage.s3 import S3ResultStore, StoredObject


class ResultStore(Protocol):
    shared: bool  # False: nothing is copied anywhere (the local default)

    def check(self) -> None: ...

    def names(self, relative: str) -> dict[str, int]: ...

    def upload(self, path: Path, relative: str, metadata: dict[str, str] | None = None) -> None: ...

    def download(self, relative: str, path: Path) -> tuple[str, dict[str, str]]: ...

    def copy(self, source: str, target: str) -> None: ...

    def remove(self, relative: str) -> int: ...

    def stored(self, relative: str) -> StoredObject | None: ...

    def stream(self, relative: str, span: tuple[int, int] | None = None) -> Iterator[bytes]: ...


class LocalResultStore:
    """RESULT_STORE unset: DATA_DIR is the only copy, so there is nothing to share or sync."""

    shared = False

    def check(self) -> None:
        pass

    def names(self, relative: str) -> dict[str, int]:
        return {}

    def upload(self, path: Path, relative: str, metadata: dict[str, str] | None = None) -> None:
        pass

    def download(self, relative: str, path: Path) -> tuple[str, dict[str, str]]:
        raise FileNotFoundError(relative)  # names() lists nothing: never asked

    def copy(self, source: str, target: str) -> None:
        pass

    def remove(self, relative: str) -> int:
        return 0

    def stored(self, relative: str) -> StoredObject | None:
        return None

    def stream(self, relative: str, span: tuple[int, int] | None = None) -> Iterator[bytes]:
        raise FileNotFoundError(relative)


@functools.cache
def open_result_store(config: StoreConfig | None) -> ResultStore:
    """The store `config` names (None: local disk only) - one per process and configuration,
    so its client (and its connections) is reused by every caller."""
    return S3ResultStore(config) if config is not None else LocalResultStore()


def result_store_for(settings: Settings, service: bool = True) -> ResultStore:
    """The store RESULT_STORE names (`service`: ambient AWS credentials only when allowed)."""
    return open_result_store(store_config(settings, service))
