"""Shards and results shared between instances (RESULT_STORE): local disk stays the working
copy, an S3-compatible bucket is the shared, durable one (docs/result-store.md)."""

from engine.storage.base import LocalResultStore, ResultStore, open_result_store, result_store_for
from engine.storage.config import ResultStoreError, StoreConfig, store_config
from engine.storage.layout import result_path, work_path
from engine.storage.s3 import S3ResultStore, StoredObject
from engine.storage.work import WorkCopy, WorkStore, upload_shard

__all__ = [
    "LocalResultStore",
    "ResultStore",
    "ResultStoreError",
    "S3ResultStore",
    "StoreConfig",
    "StoredObject",
    "WorkCopy",
    "WorkStore",
    "open_result_store",
    "result_path",
    "result_store_for",
    "store_config",
    "upload_shard",
    "work_path",
]
