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
        return self.data_dir / "pageferry.sqlite3"


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
        port=_int(env, "PORT", 8000),
    )
