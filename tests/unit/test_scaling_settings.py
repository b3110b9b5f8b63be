"""The settings of several instances (DATABASE_URL, RESULT_STORE, REDIS_URL, EXECUTOR): parsed,
checked with an error naming the variable, and their secrets kept out of repr and messages."""

from __future__ import annotations

import pytest

from config import load_settings
from config.settings import SettingsError


def test_single_box_defaults_need_only_data_dir(tmp_path):
    settings = load_settings({"DATA_DIR": str(tmp_path)})
    assert settings.db_path == tmp_path / "pageferry.db"
    assert not settings.uses_postgres
    assert settings.result_store == ""
    assert settings.redis_url is None
    assert settings.executor == "local" and settings.dask_address is None


def test_a_data_dir_of_an_earlier_version_keeps_its_store_file(tmp_path):
    (tmp_path / "pageferry.sqlite3").write_bytes(b"")
    assert load_settings({"DATA_DIR": str(tmp_path)}).db_path == tmp_path / "pageferry.sqlite3"


def test_sqlite_url_names_the_file(tmp_path):
    settings = load_settings({"DATABASE_URL": f"sqlite:///{tmp_path}/tasks.db"})
    assert settings.db_path == tmp_path / "tasks.db" and not settings.uses_postgres


def test_several_instance_settings_are_read():
    settings = load_settings(
        {
            "DATABASE_URL": "postgresql://pf:pg-secret-1@db:5432/pageferry",
            "RESULT_STORE": "s3://results/pageferry",
            "RESULT_STORE_ENDPOINT_URL": "http://minio:9000",
            "RESULT_STORE_ACCESS_KEY": "AKIA-canary",
            "RESULT_STORE_SECRET_KEY": "s3-secret-2",
            "RESULT_STORE_REGION": "eu-west-1",
            "REDIS_URL": "redis://:redis-secret-3@cache:6379/0",
            "EXECUTOR": "dask://scheduler:8786",
        }
    )
    assert settings.uses_postgres
    assert settings.result_store == "s3://results/pageferry"
    assert settings.result_store_endpoint_url == "http://minio:9000"
    assert settings.result_store_region == "eu-west-1"
    assert settings.dask_address == "tcp://scheduler:8786"
    shown = repr(settings)
    for secret in ("pg-secret-1", "AKIA-canary", "s3-secret-2", "redis-secret-3"):
        assert secret not in shown


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://u:pw-canary@h/db"),
        ("DATABASE_URL", "sqlite:///"),
        ("RESULT_STORE", "gs://bucket/prefix"),
        ("RESULT_STORE", "s3:///prefix"),
        ("REDIS_URL", "http://:pw-canary@cache:6379"),
        ("EXECUTOR", "threads"),
        ("EXECUTOR", "dask://scheduler"),
    ],
)
def test_a_value_that_cannot_work_names_the_variable(name, value):
    with pytest.raises(SettingsError) as raised:
        load_settings({name: value})
    assert name in str(raised.value)
    assert "pw-canary" not in str(raised.value)  # a URL's password is not echoed


def test_the_compose_file_configures_every_shared_system():
    """deploy/docker-compose.yml's instance environment, read as the service reads it."""
    from pathlib import Path

    import yaml

    compose = yaml.safe_load((Path(__file__).parents[2] / "deploy" / "docker-compose.yml").read_text())
    env = {k: str(v) for k, v in compose["services"]["pageferry"]["environment"].items()}
    filled = {
        k: v.replace("${API_TOKEN:?set API_TOKEN}", "t").replace("${PG_PASSWORD:?set PG_PASSWORD}", "p")
        for k, v in env.items()
    }
    filled = {k: v.replace("${S3_SECRET:?set S3_SECRET}", "s") for k, v in filled.items()}
    filled["EXECUTOR"] = "dask://dask-scheduler:8786"
    filled["ALLOWED_SOURCE_HOSTS"] = ""
    settings = load_settings(filled)
    assert settings.uses_postgres and settings.result_store.startswith("s3://")
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.dask_address == "tcp://dask-scheduler:8786"
    assert "volumes" not in compose["services"]["pageferry"]  # no shared DATA_DIR between instances
