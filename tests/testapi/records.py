"""Deterministic records served by the local test API.

Pure Python, no dependencies: tests import this module to compute the data they
expect *independently* of the server (the server imports it too, so both sides
agree by construction; the shape itself is pinned by tests/test_testapi.py).

Ids are 1-based. ``record(i)`` is a pure function of ``i``; a page of a dataset
of ``n`` records holds ids ``(page-1)*per_page + 1 .. min(page*per_page, n)``.
"""

from __future__ import annotations

import base64
import math
from datetime import date, timedelta

CATEGORIES = ("books", "games", "music", "tools")
TAGS = ("red", "green", "blue", "new", "sale", "eco")
_EPOCH = date(2020, 1, 1)
_DAYS = 1500  # created dates cycle over 2020-01-01 .. 2024-02-08
_CREATED = tuple((_EPOCH + timedelta(days=d)).isoformat() for d in range(_DAYS))
# tags for i depend on i % 3, i % 6 and (i // 6) % 6, i.e. on i % 36:
#   i % 3 == 0 -> [], 1 -> [TAGS[i % 6]], 2 -> [TAGS[i % 6], TAGS[(i // 6) % 6]]
_TAGS = tuple(
    () if r % 3 == 0 else (TAGS[r % 6],) if r % 3 == 1 else (TAGS[r % 6], TAGS[(r // 6) % 6]) for r in range(36)
)


def record(i: int) -> dict:
    """The record with id ``i`` (~225-245 bytes of compact JSON).

    Field types: int (id, quantity, meta.score), str (name, sku, category,
    description, meta.created), float (price), bool (active), list of 0-2 str
    (tags), nested object (meta), str-or-null (note; null when i % 5 == 0).
    A fresh dict every call (callers may mutate it).
    """
    return {
        "id": i,
        "name": f"item-{i}",
        "sku": f"SKU-{i:08d}",
        "price": i * 1.25,  # exact in binary: == round(i * 1.25, 2)
        "quantity": i % 50,
        "category": CATEGORIES[i & 3],
        "active": i % 3 != 0,
        "tags": list(_TAGS[i % 36]),
        "meta": {"created": _CREATED[i % _DAYS], "score": i % 97},
        "description": f"Test record {i} for pageferry.",
        "note": None if i % 5 == 0 else f"note {i}",
    }


def records(start: int, stop: int) -> list[dict]:
    """Records with ids ``start .. stop-1`` (like ``range``)."""
    return [record(i) for i in range(start, stop)]


def dataset(n: int) -> list[dict]:
    """All ``n`` records of a dataset: ids 1..n."""
    return records(1, n + 1)


# ---------------------------------------------------------------- paging math


def total_pages(n: int, per_page: int) -> int:
    return math.ceil(n / per_page) if n > 0 else 0


def page_range(page: int, per_page: int, n: int) -> range:
    """Ids on 1-based ``page`` (empty past the end)."""
    first = (page - 1) * per_page + 1
    last = min(page * per_page, n)
    return range(first, last + 1) if first <= last else range(0)


def offset_range(offset: int, limit: int, n: int) -> range:
    """Ids for ``offset`` (0-based) / ``limit``."""
    first = offset + 1
    last = min(offset + limit, n)
    return range(first, last + 1) if first <= last else range(0)


def page_ids(page: int, per_page: int, n: int) -> list[int]:
    return list(page_range(page, per_page, n))


# ---------------------------------------------------------------- cursors


def encode_cursor(offset: int) -> str:
    """Opaque cursor for a 0-based offset: url-safe base64 of ``off:<offset>``, unpadded."""
    return base64.urlsafe_b64encode(f"off:{offset}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """Inverse of :func:`encode_cursor`; raises ``ValueError`` on garbage."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except Exception as exc:  # binascii.Error, UnicodeDecodeError
        raise ValueError(f"bad cursor {cursor!r}") from exc
    if not raw.startswith("off:"):
        raise ValueError(f"bad cursor {cursor!r}")
    value = int(raw[4:])
    if value < 0:
        raise ValueError(f"bad cursor {cursor!r}")
    return value


# ---------------------------------------------------------------- /items/drift


def drift_record(i: int, page: int) -> dict:
    """Record ``i`` as served on page ``page`` of /items/drift.

    ``extra`` only on even pages; ``amount`` is an int on page 1, a float later;
    ``maybe`` is null on page 1, a string later.
    """
    r = record(i)
    r["amount"] = i if page == 1 else i + 0.5
    r["maybe"] = None if page == 1 else f"maybe {i}"
    if page % 2 == 0:
        r["extra"] = f"extra {i}"
    return r


# ---------------------------------------------------------------- /items/by-id


def owner_ids(owner: int, k: int = 3) -> list[int]:
    """Record ids belonging to ``owner``: ``owner*1000 + j`` for j = 1..k."""
    return [owner * 1000 + j for j in range(1, k + 1)]


def owner_record(owner: int, rid: int) -> dict:
    r = record(rid)
    r["owner"] = owner
    return r


def owner_records(owner: int, k: int = 3) -> list[dict]:
    return [owner_record(owner, rid) for rid in owner_ids(owner, k)]


# ---------------------------------------------------------------- /events


def event(day: date) -> dict:
    """One record per day: ``{"day": "YYYY-MM-DD", "id": YYYYMMDD, "value": ordinal % 100}``."""
    return {"day": day.isoformat(), "id": day.year * 10000 + day.month * 100 + day.day, "value": day.toordinal() % 100}


def events(start: date, end: date) -> list[dict]:
    """Events for every day in ``[start, end]`` inclusive (empty if start > end)."""
    out = []
    d = start
    one = timedelta(days=1)
    while d <= end:
        out.append(event(d))
        d += one
    return out


# ---------------------------------------------------------------- /items/csv

CSV_COLUMNS = ("id", "name", "price", "category", "active", "note")


def csv_name(i: int, accents: bool) -> str:
    """CSV ``name``: ``café-{i}`` for ids with i % 10 == 7 when accents are on, else ``item-{i}``."""
    return f"café-{i}" if accents and i % 10 == 7 else f"item-{i}"


def csv_row(i: int, accents: bool = False) -> list[str]:
    """The CSV cells (as text) for id ``i``: null -> empty cell, bools ``true``/``false``."""
    r = record(i)
    return [
        str(i),
        csv_name(i, accents),
        repr(r["price"]),
        r["category"],
        "true" if r["active"] else "false",
        "" if r["note"] is None else r["note"],
    ]


BAD_UTF8 = b"bad\xff\xfe\xc3("  # invalid UTF-8 bytes put in the note of ids with i % 10 == 3
