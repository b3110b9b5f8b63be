"""The task store opened by several gunicorn workers at the same moment on a new data dir."""
from __future__ import annotations

import threading

from service.store import SQLiteTaskStore


def test_workers_opening_a_new_store_at_once_all_succeed(tmp_path):
    for round_ in range(15):
        path = tmp_path / f"r{round_}" / "pageferry.sqlite3"
        errors: list[Exception] = []
        barrier = threading.Barrier(4)

        def open_store():
            barrier.wait()
            try:
                SQLiteTaskStore(path).list_tasks(10, None)
            except Exception as exc:  # collected: every opener must succeed
                errors.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
