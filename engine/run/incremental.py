"""Incremental loading (docs/incremental.md): a run asks only for the records changed since
the last completed run of the same job name.

A job's state is, per incremental source, the largest cursor value seen in each fan-out
unit, and the largest of those - one shape for the CLI's state file and summary and the
service's store, status and /state endpoints:

    {"<source>": {"cursor": <value>, "units": {"<unit key>": <value>, ...}}}

(`units` only for a source that fans out; values as the records wrote them.) The pieces:

- the coordinator fixes the state a run starts from (`started_state`) in the run's work
  directory, so a resumed run asks for the same bounds whatever the saved state became
  meanwhile, and hands each source's units to the pool processes (`WorkerJob.incremental`);
- a pool process puts each unit's lower bound into its requests (`SourceBounds.apply`) and
  reads each page's largest cursor (`SourceBounds.page_max`); its shard carries them
  (`ShardInfo.cursors`, folded by `fold`), so they survive a resume;
- at export the coordinator turns the selected shards into the new state (`run_state`); the
  CLI (`read_state_file`/`write_state_file`) and the service (its store) save it, merged
  with what is saved by then (`merge_states`), only when the run completed.

No pyarrow at import: the coordinator imports this module too.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from engine.errors import FieldError, JobFailed, SpecError
from engine.plan.fanout import Unit
from engine.plan.pagination import PageRequest, set_path
from engine.spec.models import HEADER_PREFIX, Incremental, JobSpec, Source

QUERY_PREFIX = "query:"  # a query parameter even when the source sends a JSON body
HTTP_DATE_HEADERS = frozenset({"if-modified-since", "if-unmodified-since"})
WORKDIR_FILE = "incremental.json"  # the state a run started from, in its work directory
UNIT_SEPARATOR = "|"  # between an id and a window's first day in a unit key
UTC_ISO = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)?$"  # a UTC (or naive) ISO-8601 time


# ---------------------------------------------------------------- cursor values


def is_time(incremental: Incremental) -> bool:
    """Cursors are times when `start` is a time (text), numbers when it is a number."""
    return isinstance(incremental.start, str)


def _parse_time(value: Any) -> tuple[dt.datetime, bool] | None:
    """(an aware datetime, whether the text had no offset), or None when `value` is no
    ISO-8601 time. A time without an offset is UTC."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC), True
    return moment, False


def as_time(value: Any) -> dt.datetime | None:
    parsed = _parse_time(value)
    return None if parsed is None else parsed[0]


def as_number(value: Any) -> int | float | None:
    """A number, or a text that is one (a column that mixed types arrives as text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def comparable(value: Any, time: bool) -> Any:
    """What cursor values are compared by; None for a value that is not one (ignored)."""
    return as_time(value) if time else as_number(value)


def later(a: Any, b: Any, time: bool) -> Any:
    """The later (larger) of two cursor values as written; one that does not read as a
    cursor value counts as absent. Ties keep `a`."""
    kb = comparable(b, time)
    if kb is None:
        return a if comparable(a, time) is not None else None
    ka = comparable(a, time)
    return b if ka is None or kb > ka else a


def _largest(values, time: bool) -> Any:
    best, best_key = None, None
    for value in values:
        key = comparable(value, time)
        if key is not None and (best_key is None or key > best_key):
            best, best_key = value, key
    return best


def unit_key(unit: Unit) -> str:
    """A unit's name in the state: its id as text, its window's first day (ISO), both joined
    by `|`; "" for a source without fan-out."""
    parts = []
    if unit.id is not None:
        parts.append(str(unit.id))
    if unit.window is not None:
        parts.append(unit.window[0].isoformat())
    return UNIT_SEPARATOR.join(parts)


# ---------------------------------------------------------------- bounds


@dataclass(frozen=True)
class Bound:
    value: Any  # what a query parameter or a body carries: `start` as given, an ISO time or a number
    moment: dt.datetime | None = None  # a time bound's instant (for HTTP-date headers)


def _iso(moment: dt.datetime, naive: bool) -> str:
    utc = moment.astimezone(dt.UTC)
    if naive:
        return utc.replace(tzinfo=None).isoformat()
    return utc.isoformat().replace("+00:00", "Z")


def bound(incremental: Incremental, saved: Any) -> Bound:
    """A unit's lower bound: `start` as given for a unit never seen (the first run), else its
    saved value less `lookback` (seconds for times, units for numbers)."""
    if is_time(incremental):
        parsed = _parse_time(saved)
        if parsed is None:
            return Bound(incremental.start, as_time(incremental.start))
        moment, naive = parsed
        try:
            moment -= dt.timedelta(seconds=incremental.lookback)
        except OverflowError:
            moment = dt.datetime.min.replace(tzinfo=dt.UTC)
        return Bound(_iso(moment, naive), moment)
    number = as_number(saved)
    if number is None:
        return Bound(incremental.start)
    lookback: int | float = incremental.lookback
    if isinstance(number, int) and float(lookback).is_integer():
        lookback = int(lookback)
    return Bound(number - lookback)


def placement(source: Source) -> tuple[str, str]:
    """Where `incremental.param` puts the bound: ("header", name) for `header:Name`, ("query",
    name) for `query:name`, ("body", dotted path) when the source sends a JSON body (GraphQL:
    `variables.<name>`), else ("query", name)."""
    assert source.incremental is not None
    param = source.incremental.param
    if param.lower().startswith(HEADER_PREFIX):
        return "header", param[len(HEADER_PREFIX) :].strip()
    if param.startswith(QUERY_PREFIX) and param[len(QUERY_PREFIX) :]:
        return "query", param[len(QUERY_PREFIX) :]
    if source.sends_body:
        return "body", param
    return "query", param


def _http_date(moment: dt.datetime) -> str:
    return format_datetime(moment.astimezone(dt.UTC), usegmt=True)


class SourceBounds:
    """One source's bounds in a pool process, from the units' values the run started with."""

    def __init__(self, source: Source, units: Mapping[str, Any] | None):
        assert source.incremental is not None
        self.incremental = source.incremental
        self.time = is_time(source.incremental)
        self.units = dict(units or {})
        self.where, self.name = placement(source)
        self.records_path = source.records

    def bound(self, unit: Unit) -> Bound:
        return bound(self.incremental, self.units.get(unit_key(unit)))

    def apply(self, request: PageRequest, unit: Unit) -> PageRequest:
        """`request` with the unit's lower bound where `incremental.param` says."""
        found = self.bound(unit)
        if self.where == "header":
            if self.name.lower() in HTTP_DATE_HEADERS and found.moment is not None:
                text = _http_date(found.moment)
            else:
                text = str(found.value)
            return PageRequest(request.url, request.params, request.body, {**(request.headers or {}), self.name: text})
        if self.where == "body":
            body = set_path(request.body or {}, self.name, found.value)
            return PageRequest(request.url, request.params, body, request.headers)
        return PageRequest(request.url, {**request.params, self.name: found.value}, request.body, request.headers)

    def page_max(self, table: Any, doc: Any) -> Any:
        """The largest cursor among a page's records, as written (None: none has one). Read
        from the page's flat table, whose column of a dotted path is named by it; a path
        through a list (`tags.0.at`) from the records themselves."""
        cursor = self.incremental.cursor
        index = table.schema.get_field_index(cursor)  # -1: absent, or two columns of the name
        if index >= 0:
            return _column_max(table.column(index), self.time)
        if "." in cursor and doc is not None:
            from engine.fetch.records import find_records, get_path

            return _largest((get_path(r, cursor) for r in find_records(doc, self.records_path)), self.time)
        return None


def _column_max(column: Any, time: bool) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return None if time else _largest([pc.max(column).as_py()], time)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if time:
            # The usual case, UTC times all written alike: their text order is their time order,
            # so Arrow finds the latest without a datetime made per record.
            present = column.drop_null()
            if not len(present):
                return None
            lengths = pc.min_max(pc.utf8_length(present)).as_py()
            if lengths["min"] == lengths["max"] and pc.all(pc.match_substring_regex(present, UTC_ISO)).as_py():
                latest = pc.max(present).as_py()
                if as_time(latest) is not None:  # else a text shaped like a time is none (month 13)
                    return latest
        # Otherwise each distinct text is read once: equal times in other spellings compare right.
        return _largest(pc.unique(column).to_pylist(), time)
    return None


def fold(cursors: dict[str, Any], key: str, value: Any, skipped: bool, time: bool) -> None:
    """Add a page to its shard's `cursors`: the largest value per unit key, or None for good
    once a page of the unit was skipped (that unit does not advance)."""
    if skipped:
        cursors[key] = None
    elif value is not None and (key not in cursors or cursors[key] is not None):
        cursors[key] = later(cursors.get(key), value, time)


# ---------------------------------------------------------------- state


def fans_out(source: Source) -> bool:
    return source.ids is not None or source.windows is not None


def source_units(entry: Any, time: bool) -> dict[str, Any]:
    """A saved source entry's units (without fan-out, the one unit ""), values that do not read
    as cursors dropped."""
    if not isinstance(entry, dict):
        return {}
    units = entry.get("units")
    if not isinstance(units, dict):
        units = {"": entry.get("cursor")}
    return {str(k): v for k, v in units.items() if comparable(v, time) is not None}


def source_state(source: Source, units: Mapping[str, Any]) -> dict:
    """The public entry of a source: `cursor` (the latest of its units, None before any was
    seen) and, for a source that fans out, `units`."""
    assert source.incremental is not None
    time = is_time(source.incremental)
    entry: dict[str, Any] = {"cursor": _largest(units.values(), time)}
    if fans_out(source):
        entry["units"] = dict(units)
    return entry


def has_incremental(spec: JobSpec) -> bool:
    return any(source.incremental is not None for source in spec.sources)


def started_state(spec: JobSpec, workdir: Path, saved: Mapping[str, Any] | None) -> list[dict | None] | None:
    """Per source, the units' values this run starts from (None for a source that is not
    incremental); None when no source is. The first run in a work directory records `saved`
    there; a resumed one reads it back and ignores `saved`."""
    if not has_incremental(spec):
        return None
    path = workdir / WORKDIR_FILE
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))["state"]
    except FileNotFoundError:
        recorded = dict(saved or {})
        _write_json(path, {"state": recorded})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise JobFailed(f"cannot read the incremental state this run started from ({path}): {exc}") from None
    if not isinstance(recorded, dict):
        raise JobFailed(f"cannot read the incremental state this run started from ({path}): not an object")
    return [
        source_units(recorded.get(s.name), is_time(s.incremental)) if s.incremental is not None else None
        for s in spec.sources
    ]


def run_state(spec: JobSpec, started: list[dict | None] | None, shards: list[list[Any]]) -> dict | None:
    """The state after a completed run: the started units, each advanced to the largest
    cursor its shards hold - except units with a skipped page, which keep their value."""
    if started is None:
        return None
    state = {}
    for i, source in enumerate(spec.sources):
        if source.incremental is None:
            continue
        time = is_time(source.incremental)
        seen: dict[str, Any] = {}
        for info in shards[i]:
            for key, value in info.cursors.items():
                fold(seen, key, value, value is None, time)
        units = dict(started[i] or {})
        for key, value in seen.items():
            if value is not None:
                units[key] = later(units.get(key), value, time)
        state[source.name] = source_state(source, units)
    return state


def merge_states(spec: JobSpec, current: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict:
    """`current` (what is saved now) with each of the spec's incremental sources advanced to
    `new` unit by unit (the later value wins: two runs of one name finishing in either order
    leave the later cursors). Other entries of `current` are kept."""
    merged = dict(current or {})
    for source in spec.sources:
        if source.incremental is None or source.name not in new:
            continue
        time = is_time(source.incremental)
        units = source_units(merged.get(source.name), time)
        for key, value in source_units(new[source.name], time).items():
            units[key] = later(units.get(key), value, time)
        merged[source.name] = source_state(source, units)
    return merged


def of_spec(spec: JobSpec, state: Mapping[str, Any]) -> dict:
    """The entries of `state` for the spec's incremental sources (what a summary shows)."""
    return {s.name: state[s.name] for s in spec.sources if s.incremental is not None and s.name in state}


# ---------------------------------------------------------------- the CLI's state file


def default_state_path(name: str) -> Path:
    return Path(".pageferry") / "state" / f"{name}.json"


def read_state_file(path: Path) -> dict:
    """The state saved at `path`, {} when there is none yet; ValueError when the file is not
    a state file (OSError when it cannot be read)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    state = document.get("state") if isinstance(document, dict) else None
    if not isinstance(state, dict):
        raise ValueError('not a pageferry state file (no "state" object)')
    return state


def write_state_file(path: Path, name: str, state: Mapping[str, Any]) -> None:
    """Atomically: a reader finds the old state or the new one, never a part."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    _write_json(path, {"name": name, "updated_at": now, "state": dict(state)})


def load_for_run(option: str | None, spec: JobSpec) -> tuple[Path | None, dict | None]:
    """The CLI's `--state FILE` (default `.pageferry/state/<name>.json`) and the state saved
    there; (None, None) for a spec without incremental sources. A file that cannot be read or
    a folder that cannot be written is refused before anything is fetched."""
    if not has_incremental(spec):
        return None, None
    path = Path(option) if option else default_state_path(spec.name)
    try:
        state = read_state_file(path)
        path.parent.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SpecError([FieldError("--state", f"cannot use {path}: {reason}")]) from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise SpecError([FieldError("--state", f"the folder {path.parent} is not writable")])
    return path, state


def save_after_run(path: Path, spec: JobSpec, state: Mapping[str, Any]) -> dict:
    """Save a completed run's state, merged with what the file holds by then; returns the
    entries of the spec's sources (the summary's `state`). OSError when it cannot be written."""
    try:
        current = read_state_file(path)
    except (OSError, ValueError):
        current = {}  # unreadable now: the run's state replaces it
    merged = merge_states(spec, current, state)
    write_state_file(path, spec.name, merged)
    return of_spec(spec, merged)


def _write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temp, "w", encoding="utf-8") as file:
            json.dump(document, file, indent=1, sort_keys=True)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
