"""The spec the integration, service and browser tests export: the local test API's paged
items (`/items/page`, total pages from `meta.total_pages`) or another of its item lists
(`/items/offset`: offset pagination, total records from `total`)."""

from __future__ import annotations


def page_spec(
    api,
    path: str = "/items/page",
    *,
    name: str | None = "items",
    n: int = 500,
    size: int = 50,
    fmt: str = "csv",
    concurrency: int = 4,
    **params,
) -> dict:
    """`params` go to the test API as query parameters (delay_ms, fault, fail_all, hide_total...);
    `name=None` leaves the spec's name out (the engine's default name)."""
    if path == "/items/page":
        pagination = {"type": "page", "size": size, "total_pages": "meta.total_pages"}
    else:
        pagination = {"type": "offset", "size": size, "total_records": "total"}
    spec = {} if name is None else {"name": name}
    spec.update(
        {
            "sources": [{"url": api.url(path), "params": {"n": n, **params}, "pagination": pagination}],
            "concurrency": concurrency,
            "export": {"format": fmt},
        }
    )
    return spec
