"""The service's one way to check a spec before it is stored or run: fail closed - public
addresses only unless ALLOWED_SOURCE_HOSTS says otherwise, `${NAME}` only for SECRET_NAMES,
ids files only as uploads, DuckDB files only in the service's own folder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from config import Settings

if TYPE_CHECKING:
    from engine import JobSpec, PreparedJob


def prepare_for_service(
    spec: JobSpec, settings: Settings, env: Mapping[str, str], id_files: Mapping[int, bytes] | None = None
) -> PreparedJob:
    from engine import outbound_policy, prepare, service_secret_names

    options: dict[str, Any] = {"id_files": id_files, "read_id_files": False}
    return prepare(
        spec,
        env,
        outbound_policy(settings, service=True),
        secret_names=service_secret_names(settings),
        duckdb_dir=settings.data_dir / "duckdb",
        **options,
    )
