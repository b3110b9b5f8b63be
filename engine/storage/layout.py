"""Where things live in the shared store, relative to RESULT_STORE:

    work/<job key>/job.json, incremental.json, fanout/..., uploads/..., shards/<name> (+ .sha256)
    results/<task id>/<file>, results/<task id>/uploads/...

The job key is the job's id: the task id for the service (the name of its work directory)."""

from __future__ import annotations

import re

KEY = re.compile(r"^[A-Za-z0-9_.-]{1,200}\Z")  # a job or task id: one path segment


def _segment(key: str) -> str:
    if not KEY.match(key) or key in (".", ".."):
        raise ValueError(f"not a job key: {key[:40]!r}")
    return key


def work_path(job_key: str, relative: str = "") -> str:
    """`relative` (a path inside the job's work directory; "" for the folder itself)."""
    return f"work/{_segment(job_key)}/{relative}"


def result_path(task_id: str, name: str = "") -> str:
    """A task's result file `name` ("" for the task's results folder)."""
    return f"results/{_segment(task_id)}/{name}"
