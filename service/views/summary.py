"""The run summary: what one run did, source by source. Kept in the task's status as
`summary` and logged as one JSON line, so a scheduled export can be watched from the logs."""

from __future__ import annotations

from typing import Any

from service.store import TaskStatus


def run_summary(
    task: dict,
    status: TaskStatus,
    stats: list[dict],
    result: Any = None,
    error: Any = None,
    message: str | None = None,
    seconds: float | None = None,
) -> dict:
    """The summary of a finished run:

        {"task_id", "schedule_id", "scheduled_for", "name", "status", "seconds", "rows", "bytes",
         "output_bytes", "error",
         "sources": [{"name", "ok", "rows", "records", "pages", "bytes", "requests", "retries",
                      "seconds", "error"}],
         "deliveries": [{"target", "ok", "error", ...}]}

    `bytes` are bytes downloaded from the sources; `output_bytes` the result file's size;
    `rows` rows exported (after shaping; null when the run did not complete); a source's
    `seconds` is the time until its last page was in (null when it did not finish).

    `stats`: the job's per-source figures (JobRunner.source_stats()); `result`: the JobResult
    when completed; `error`: the JobFailed, if any (its pages name the failed sources);
    `message`: the status's (redacted) error message."""
    failed_pages: dict[str, str] = {}
    for page in getattr(error, "pages", None) or []:
        failed_pages.setdefault(page.source, page.error)
    by_name = {s["name"]: s for s in (result.sources if result is not None else [])}
    sources = []
    for stat in stats:
        name = stat["name"]
        done = by_name.get(name, {})
        entry = {
            "name": name,
            "ok": status == TaskStatus.COMPLETED or (name not in failed_pages and stat.get("seconds") is not None),
            "rows": result.rows_by_source.get(name) if result is not None else None,
            "records": done.get("records", stat["records"]),
            "pages": done.get("pages", stat["pages"]),
            "bytes": stat["bytes"],
            "requests": stat["requests"],
            "retries": stat["retries"],
            "seconds": stat.get("seconds"),
            "error": failed_pages.get(name),
        }
        if done.get("skipped_pages"):
            entry["skipped_pages"] = done["skipped_pages"]
        sources.append(entry)
    extra = task.get("extra") or {}
    summary = {
        "task_id": task["id"],
        "schedule_id": task.get("schedule_id"),
        "scheduled_for": extra.get("scheduled_for"),
        "name": task.get("name"),
        "status": TaskStatus(status).value,
        "seconds": result.seconds if result is not None else seconds,
        "rows": result.rows if result is not None else None,
        "bytes": sum(s["bytes"] for s in stats),
        "output_bytes": result.bytes if result is not None else None,
        "error": message,
        "sources": sources,
    }
    if result is not None and result.deliveries:
        summary["deliveries"] = result.deliveries
    return summary
