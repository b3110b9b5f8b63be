"""Every setting pageferry reads from the environment, with defaults that work out of the box.

`load_settings()` is called by whoever starts a process (the CLI, the app factory, gunicorn's
config); modules receive the resulting `Settings` instead of reading `os.environ` themselves.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class SettingsError(ValueError):
    """An environment variable holds a value pageferry cannot use."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("data")
    temp_dir: Path = Path("data/tmp")
    workers: int = os.cpu_count() or 1
    max_concurrent_tasks: int = 4
    max_file_size_mib: int = 100
    worker_timeout: float = 3600.0
    result_ttl: float = 86400.0
    api_token: str | None = field(default=None, repr=False)
    allowed_source_hosts: tuple[str, ...] = ()
    log_level: str = "INFO"
    environment: str = "development"
    port: int = 8000
    bind: str = "127.0.0.1:8000"
    # Fail closed (docs/security.md)
    allow_no_token: bool = False
    secret_names: tuple[str, ...] = ("PAGEFERRY_SECRET_*",)
    allow_ambient_credentials: bool = False
    ftps_ca_file: Path | None = None
    max_ws_per_task: int = 20
    max_ws_total: int = 32
    max_queued_per_profile: int = 20
    max_schedules_per_profile: int = 20
    max_spec_bytes: int = 1024 * 1024
    max_request_bodies: int = 16
    max_previews: int = 4  # per worker: previews fetching at once (each holds a request thread)
    # Beyond one machine (docs/scaling.md); empty = the single-box default
    database_url: str = field(default="", repr=False)  # "" = sqlite under DATA_DIR; may hold a password
    result_store: str = ""  # "" = DATA_DIR; or s3://bucket/prefix
    result_store_endpoint_url: str | None = None
    result_store_access_key: str | None = field(default=None, repr=False)
    result_store_secret_key: str | None = field(default=None, repr=False)
    result_store_region: str | None = None
    redis_url: str | None = field(default=None, repr=False)  # may hold a password
    executor: str = "local"  # or dask://host:port

    @property
    def max_file_size(self) -> int:
        """MAX_FILE_SIZE in bytes."""
        return self.max_file_size_mib * 1024 * 1024

    @property
    def work_dir(self) -> Path:
        """Per-task work directories (shards, uploads): under TEMP_DIR."""
        return self.temp_dir / "work"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def db_path(self) -> Path:
        """The SQLite task store's file (when DATABASE_URL is not PostgreSQL): a data directory
        made by an earlier version keeps its pageferry.sqlite3."""
        if self.database_url.startswith("sqlite:///"):
            return Path(self.database_url.removeprefix("sqlite:///"))
        legacy = self.data_dir / "pageferry.sqlite3"
        return legacy if legacy.exists() else self.data_dir / "pageferry.db"

    @property
    def uses_postgres(self) -> bool:
        return self.database_url.startswith(POSTGRES_SCHEMES)

    @property
    def dask_address(self) -> str | None:
        """The scheduler's address (tcp://host:port) when EXECUTOR is dask://host:port."""
        if self.executor == "local":
            return None
        return "tcp://" + self.executor.removeprefix("dask://")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be positive, got {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name} must be 1 or 0, got {raw!r}")


def _names(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    return tuple(part.strip() for part in raw.split(",") if part.strip())


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def _database_url(env: Mapping[str, str]) -> str:
    raw = env.get("DATABASE_URL", "").strip()
    if raw and not (raw.startswith(POSTGRES_SCHEMES) or (raw.startswith("sqlite:///") and len(raw) > 10)):
        # the value is not echoed: it may hold a password
        raise SettingsError("DATABASE_URL must be sqlite:///<path> or postgresql://user:password@host:port/db")
    return raw


def _result_store(env: Mapping[str, str]) -> str:
    raw = env.get("RESULT_STORE", "").strip()
    if "://" in raw:
        bucket = raw.removeprefix("s3://").split("/", 1)[0]
        if not raw.startswith("s3://") or not bucket:
            raise SettingsError(f"RESULT_STORE must be a folder or s3://bucket/prefix, got {raw!r}")
    return raw


def _redis_url(env: Mapping[str, str]) -> str | None:
    raw = env.get("REDIS_URL", "").strip()
    if raw and not raw.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError("REDIS_URL must be redis://host:port/db, rediss://… or unix:///path")
    return raw or None


def _executor(env: Mapping[str, str]) -> str:
    raw = env.get("EXECUTOR", "").strip() or "local"
    if raw == "local":
        return raw
    host, _, port = raw.removeprefix("dask://").rpartition(":")
    if not raw.startswith("dask://") or not host or not port.isdigit():
        raise SettingsError(f"EXECUTOR must be local or dask://host:port, got {raw!r}")
    return raw


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    data_dir = Path(env.get("DATA_DIR", "").strip() or "data")
    temp_dir = Path(env.get("TEMP_DIR", "").strip() or data_dir / "tmp")
    log_level = (env.get("LOG_LEVEL", "").strip() or "INFO").upper()
    if log_level not in logging.getLevelNamesMapping():
        raise SettingsError(f"LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {log_level!r}")
    hosts = tuple(h.strip().lower() for h in env.get("ALLOWED_SOURCE_HOSTS", "").split(",") if h.strip())
    return Settings(
        data_dir=data_dir,
        temp_dir=temp_dir,
        workers=_int(env, "WORKERS", os.cpu_count() or 1),
        max_concurrent_tasks=_int(env, "MAX_CONCURRENT_TASKS", 4),
        max_file_size_mib=_int(env, "MAX_FILE_SIZE", 100),
        worker_timeout=_float(env, "WORKER_TIMEOUT", 3600.0),
        result_ttl=_float(env, "RESULT_TTL", 86400.0),
        api_token=env.get("API_TOKEN", "").strip() or None,
        allowed_source_hosts=hosts,
        log_level=log_level,
        environment=env.get("ENVIRONMENT", "").strip() or "development",
        port=(port := _int(env, "PORT", 8000)),
        bind=env.get("BIND", "").strip() or f"127.0.0.1:{port}",
        allow_no_token=_bool(env, "ALLOW_NO_TOKEN"),
        secret_names=_names(env, "SECRET_NAMES", ("PAGEFERRY_SECRET_*",)),
        allow_ambient_credentials=_bool(env, "ALLOW_AMBIENT_CREDENTIALS"),
        ftps_ca_file=Path(env["FTPS_CA_FILE"].strip()) if env.get("FTPS_CA_FILE", "").strip() else None,
        max_ws_per_task=_int(env, "MAX_WS_PER_TASK", 20),
        max_ws_total=_int(env, "MAX_WS_TOTAL", 32),
        max_queued_per_profile=_int(env, "MAX_QUEUED_PER_PROFILE", 20),
        max_schedules_per_profile=_int(env, "MAX_SCHEDULES_PER_PROFILE", 20),
        max_spec_bytes=_int(env, "MAX_SPEC_BYTES", 1024 * 1024, minimum=1024),
        max_request_bodies=_int(env, "MAX_REQUEST_BODIES", 16),
        max_previews=_int(env, "MAX_PREVIEWS", 4),
        database_url=_database_url(env),
        result_store=_result_store(env),
        result_store_endpoint_url=env.get("RESULT_STORE_ENDPOINT_URL", "").strip() or None,
        result_store_access_key=env.get("RESULT_STORE_ACCESS_KEY", "").strip() or None,
        result_store_secret_key=env.get("RESULT_STORE_SECRET_KEY", "").strip() or None,
        result_store_region=env.get("RESULT_STORE_REGION", "").strip() or None,
        redis_url=_redis_url(env),
        executor=_executor(env),
    )
