"""GET /metrics: Prometheus text, computed from the task store at scrape time - so every
gunicorn worker answers with the same numbers (no per-process counters to merge)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from service.store import TaskStatus, TaskStore


class StoreCollector:
    def __init__(self, store: TaskStore):
        self.store = store

    def collect(self):
        counts = self.store.counts()
        tasks = GaugeMetricFamily("pageferry_tasks", "Tasks by status", labels=["status"])
        for status in TaskStatus:
            tasks.add_metric([status.value], counts["by_status"].get(status.value, 0))
        yield tasks
        totals = counts["totals"]
        for name, key, text in (
            ("pageferry_pages", "pages", "Pages fetched by all tasks"),
            ("pageferry_requests", "requests", "HTTP requests sent by all tasks"),
            ("pageferry_retries", "retries", "Retried requests of all tasks"),
            ("pageferry_bytes", "bytes", "Bytes downloaded by all tasks"),
            ("pageferry_rows", "rows", "Rows exported by completed tasks"),
        ):
            family = CounterMetricFamily(name, text)
            family.add_metric([], totals[key])
            yield family


def registry_for(store: TaskStore) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
