"""A throwaway PostgreSQL cluster for a test session: `initdb` in a temp directory, started with
`pg_ctl` on a free port on 127.0.0.1 (as the `postgres` user when the tests run as root: initdb
refuses root), stopped and removed at the end. Debian's server binaries (`.ci/install`)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.net import free_port

PASSWORD = "pg-pw-Zr8q1Vx"  # the test DSN's secret: it must never show up in a status or log


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{cmd[0]} failed ({done.returncode}): {done.stderr or done.stdout}")


class PostgresCluster:
    def __init__(self, root: Path):
        binaries = pg_bin()
        assert binaries is not None, "PostgreSQL server binaries are not installed: run .ci/install"
        self.bin = binaries
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.log = root / "server.log"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        os.chmod(self.root, 0o700)
        _run(
            _as_owner(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "pageferry",
                    "--pwfile",
                    str(pwfile),
                    "--auth=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ]
            )
        )
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=50"
        _run(
            _as_owner(
                [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, "start"]
            )
        )

    def stop(self) -> None:
        subprocess.run(
            _as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
        )

    @property
    def dsn(self) -> str:
        return f"postgresql://pageferry:{PASSWORD}@127.0.0.1:{self.port}/postgres"


def start_cluster(root: Path) -> PostgresCluster:
    cluster = PostgresCluster(root)
    cluster.start()
    return cluster


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """The DSN of a fresh cluster on 127.0.0.1 (one per test session)."""
    root = Path(tempfile.mkdtemp(prefix="pageferry-pg-"))
    os.chmod(root, 0o755)  # the `postgres` user walks into it
    cluster = PostgresCluster(root / "cluster")
    try:
        cluster.start()
        yield cluster.dsn
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def create_database(dsn: str) -> str:
    """A new, empty database on the cluster `dsn` points at; returns its DSN."""
    name = f"db_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return dsn.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def postgres_databases(postgres_dsn) -> Iterator[Callable[[], str]]:
    """Makes fresh databases on the session's cluster, one per call (their DSNs); every one is
    dropped after the test, whoever is still connected."""
    made: list[str] = []

    def make() -> str:
        made.append(create_database(postgres_dsn))
        return made[-1]

    yield make
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        for dsn in made:
            admin.execute(f"DROP DATABASE IF EXISTS {dsn.rsplit('/', 1)[1]} WITH (FORCE)")
