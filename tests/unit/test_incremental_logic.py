"""Incremental loading's pure parts (engine/run/incremental.py): bounds and where they go,
the largest cursor of a page, the state after a run, the state file."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from engine.errors import SpecError
from engine.fetch.records import parse_page
from engine.plan.fanout import Unit
from engine.plan.pagination import PageRequest
from engine.run import incremental as inc
from engine.shards import ShardInfo
from engine.spec.models import CsvSourceOptions, parse_spec

TIME = {"cursor": "updated_at", "param": "since", "start": "2024-01-01T00:00:00Z", "lookback": 3600}


def spec_of(*sources: dict, name: str = "job"):
    return parse_spec({"name": name, "sources": list(sources), "export": {"format": "zip"}})


def source_of(**fields):
    base = {"url": "http://127.0.0.1:9/changes", "incremental": TIME}
    return spec_of({**base, **fields}).sources[0]


def page(records: list, records_path: str | None = None):
    body = json.dumps({"data": records}).encode()
    return parse_page(body, "json", records_path, CsvSourceOptions())


NO_UNIT = Unit(0)


# ---------------------------------------------------------------- bounds


def test_a_unit_never_seen_asks_from_start_as_written():
    source = source_of(incremental={**TIME, "start": "2024-01-01T00:00:00+00:00"})
    request = inc.SourceBounds(source, {}).apply(PageRequest("http://x/changes", {"a": 1}), NO_UNIT)
    assert request.params == {"a": 1, "since": "2024-01-01T00:00:00+00:00"}


@pytest.mark.parametrize(
    ("saved", "sent"),
    [
        ("2024-03-01T12:00:00Z", "2024-03-01T11:00:00Z"),
        ("2024-03-01T14:00:00+02:00", "2024-03-01T11:00:00Z"),  # compared and sent in UTC
        ("2024-03-01T12:00:00.250Z", "2024-03-01T11:00:00.250000Z"),
        ("2024-03-01T12:00:00", "2024-03-01T11:00:00"),  # naive stays naive (read as UTC)
    ],
)
def test_a_saved_time_is_sent_less_the_lookback(saved, sent):
    bounds = inc.SourceBounds(source_of(), {"": saved})
    assert bounds.apply(PageRequest("http://x/changes", {}), NO_UNIT).params == {"since": sent}


@pytest.mark.parametrize(
    ("start", "lookback", "saved", "sent"),
    [(0, 5, 120, 115), (0, 5, None, 0), (0, 1, 1.5, 0.5), (0, 2.5, 10, 7.5), (3, 0, "41", 41)],
)
def test_numeric_cursors_subtract_units(start, lookback, saved, sent):
    source = source_of(incremental={"cursor": "version", "param": "min_version", "start": start, "lookback": lookback})
    units = {} if saved is None else {"": saved}
    value = inc.SourceBounds(source, units).apply(PageRequest("http://x", {}), NO_UNIT).params["min_version"]
    assert value == sent and type(value) is type(sent)


def test_if_modified_since_gets_an_http_date_other_headers_iso():
    header = source_of(incremental={**TIME, "param": "header:If-Modified-Since"})
    request = inc.SourceBounds(header, {"": "2024-03-01T12:00:00Z"}).apply(PageRequest("http://x", {}), NO_UNIT)
    assert request.headers == {"If-Modified-Since": "Fri, 01 Mar 2024 11:00:00 GMT"} and request.params == {}
    first = inc.SourceBounds(header, {}).apply(PageRequest("http://x", {}), NO_UNIT)
    assert first.headers == {"If-Modified-Since": "Mon, 01 Jan 2024 00:00:00 GMT"}
    other = source_of(incremental={**TIME, "param": "header:X-Since"})
    request = inc.SourceBounds(other, {"": "2024-03-01T12:00:00Z"}).apply(
        PageRequest("http://x", {}, None, {"X-Other": "1"}), NO_UNIT
    )
    assert request.headers == {"X-Other": "1", "X-Since": "2024-03-01T11:00:00Z"}


def test_a_source_with_a_body_gets_the_bound_at_a_dotted_path_unless_query_is_asked():
    body_source = source_of(
        method="POST", body={"filter": {"kind": "a"}}, incremental={**TIME, "param": "filter.since"}
    )
    base = PageRequest("http://x", {"page": 2}, {"filter": {"kind": "a"}})
    request = inc.SourceBounds(body_source, {"": "2024-03-01T12:00:00Z"}).apply(base, NO_UNIT)
    assert request.body == {"filter": {"kind": "a", "since": "2024-03-01T11:00:00Z"}} and request.params == {"page": 2}
    assert base.body == {"filter": {"kind": "a"}}  # the unit's body is not changed in place
    queried = source_of(method="POST", body={"q": 1}, incremental={**TIME, "param": "query:since"})
    request = inc.SourceBounds(queried, {}).apply(PageRequest("http://x", {}, {"q": 1}), NO_UNIT)
    assert request.params == {"since": "2024-01-01T00:00:00Z"} and request.body == {"q": 1}


def test_graphql_takes_the_bound_as_a_variable():
    source = source_of(
        graphql={"query": "query($since: String) { x }"}, incremental={**TIME, "param": "variables.since"}
    )
    base = PageRequest("http://x", {}, {"query": "q", "variables": {"first": 10}})
    request = inc.SourceBounds(source, {}).apply(base, NO_UNIT)
    assert request.body == {"query": "q", "variables": {"first": 10, "since": "2024-01-01T00:00:00Z"}}


def test_each_unit_asks_from_its_own_value():
    source = source_of(ids={"values": [1, 2, 3], "param": "owner"})
    bounds = inc.SourceBounds(source, {"1": "2024-02-01T10:00:00Z", "3": "2024-05-01T10:00:00Z"})
    sent = [bounds.apply(PageRequest("http://x", {}), Unit(i, i + 1)).params["since"] for i in range(3)]
    assert sent == ["2024-02-01T09:00:00Z", "2024-01-01T00:00:00Z", "2024-05-01T09:00:00Z"]


def test_unit_keys():
    window = (dt.date(2024, 1, 1), dt.date(2024, 1, 7))
    assert inc.unit_key(Unit(0)) == ""
    assert inc.unit_key(Unit(3, 42)) == "42"
    assert inc.unit_key(Unit(3, "eu")) == "eu"
    assert inc.unit_key(Unit(3, None, window)) == "2024-01-01"
    assert inc.unit_key(Unit(3, "eu", window)) == "eu|2024-01-01"


# ---------------------------------------------------------------- the largest cursor of a page


def test_page_max_compares_instants_not_texts_and_ignores_what_is_no_time():
    records = [
        {"id": 1, "updated_at": "2024-01-01T10:00:00+02:00"},  # 08:00 UTC
        {"id": 2, "updated_at": "2024-01-01T09:00:00Z"},
        {"id": 3, "updated_at": None},
        {"id": 4, "updated_at": "yesterday"},
        {"id": 5},
    ]
    parsed = page(records)
    assert inc.SourceBounds(source_of(), {}).page_max(parsed.table, parsed.doc) == "2024-01-01T09:00:00Z"
    nothing = page([{"id": 1}, {"id": 2, "updated_at": "soon"}])
    assert inc.SourceBounds(source_of(), {}).page_max(nothing.table, nothing.doc) is None


def test_page_max_of_numbers_nested_paths_and_paths_through_lists():
    numeric = source_of(incremental={"cursor": "meta.version", "param": "v", "start": 0})
    parsed = page([{"meta": {"version": 7}}, {"meta": {"version": 12}}, {"meta": {}}])
    assert inc.SourceBounds(numeric, {}).page_max(parsed.table, parsed.doc) == 12
    mixed = page([{"meta": {"version": "30"}}, {"meta": {"version": 4}}, {"meta": {"version": "n/a"}}])
    assert inc.SourceBounds(numeric, {}).page_max(mixed.table, mixed.doc) == "30"  # as written
    listed = source_of(incremental={**TIME, "cursor": "events.0.at"})
    parsed = page([{"events": [{"at": "2024-01-02T00:00:00Z"}]}, {"events": [{"at": "2024-01-03T00:00:00Z"}]}])
    assert inc.SourceBounds(listed, {}).page_max(parsed.table, parsed.doc) == "2024-01-03T00:00:00Z"
    as_time = source_of()  # a time cursor over numbers: none of them is a time
    parsed = page([{"updated_at": 5}])
    assert inc.SourceBounds(as_time, {}).page_max(parsed.table, parsed.doc) is None


# ---------------------------------------------------------------- the state after a run


def shard(cursors: dict) -> ShardInfo:
    return ShardInfo(0, (0, 1), (0, 1), cursors=cursors)


def test_a_run_advances_each_unit_to_its_largest_value_and_skipped_units_stay():
    spec = spec_of(
        {"url": "http://127.0.0.1:9/c", "ids": {"values": ["a", "b", "c", "d"], "param": "o"}, "incremental": TIME}
    )
    started = [{"a": "2024-01-05T00:00:00Z", "b": "2024-01-05T00:00:00Z", "c": "2024-01-09T00:00:00Z"}]
    shards = [
        shard({"a": "2024-01-06T00:00:00Z", "b": "2024-02-01T00:00:00Z"}),
        shard({"a": "2024-01-07T00:00:00Z", "b": None, "c": "2024-01-08T00:00:00Z"}),  # b: a page was skipped
        shard({"d": "2024-01-02T00:00:00Z"}),
    ]
    state = inc.run_state(spec, started, [shards])
    assert state == {
        "job": {
            "cursor": "2024-01-09T00:00:00Z",
            "units": {
                "a": "2024-01-07T00:00:00Z",
                "b": "2024-01-05T00:00:00Z",  # kept: the unit had a skipped page
                "c": "2024-01-09T00:00:00Z",  # an older value seen never moves a cursor back
                "d": "2024-01-02T00:00:00Z",
            },
        }
    }


def test_a_source_without_fan_out_shows_only_its_cursor_and_other_sources_none():
    spec = spec_of(
        {"name": "plain", "url": "http://127.0.0.1:9/c"},
        {"name": "changes", "url": "http://127.0.0.1:9/c", "incremental": TIME},
    )
    assert inc.run_state(spec, [None, {}], [[], [shard({"": "2024-03-01T00:00:00Z"})]]) == {
        "changes": {"cursor": "2024-03-01T00:00:00Z"}
    }
    assert inc.run_state(spec, [None, {}], [[], []]) == {"changes": {"cursor": None}}
    assert inc.run_state(spec_of({"url": "http://127.0.0.1:9/c"}), None, [[]]) is None


def test_fold_keeps_a_skipped_unit_blocked_whatever_comes_after():
    cursors: dict = {}
    inc.fold(cursors, "u", "2024-01-02T00:00:00Z", False, True)
    inc.fold(cursors, "u", "2024-01-01T00:00:00Z", False, True)
    assert cursors == {"u": "2024-01-02T00:00:00Z"}
    inc.fold(cursors, "u", None, True, True)
    inc.fold(cursors, "u", "2024-05-01T00:00:00Z", False, True)
    assert cursors == {"u": None}


def test_merge_keeps_the_later_value_of_each_unit_and_other_entries():
    spec = spec_of(
        {"name": "s", "url": "http://127.0.0.1:9/c", "ids": {"values": [1, 2], "param": "o"}, "incremental": TIME}
    )
    current = {
        "s": {"cursor": "2024-02-01T00:00:00Z", "units": {"1": "2024-02-01T00:00:00Z", "2": "2024-01-01T00:00:00Z"}},
        "gone": {"cursor": 5},
    }
    new = {"s": {"cursor": "2024-01-15T00:00:00Z", "units": {"1": "2024-01-15T00:00:00Z", "2": "2024-01-15T00:00:00Z"}}}
    merged = inc.merge_states(spec, current, new)
    assert merged == {
        "s": {"cursor": "2024-02-01T00:00:00Z", "units": {"1": "2024-02-01T00:00:00Z", "2": "2024-01-15T00:00:00Z"}},
        "gone": {"cursor": 5},
    }
    assert inc.of_spec(spec, merged) == {"s": merged["s"]}


def test_saved_values_that_are_not_cursors_are_dropped():
    assert inc.source_units({"cursor": "not a time"}, True) == {}
    assert inc.source_units({"cursor": "2024-01-01T00:00:00Z"}, True) == {"": "2024-01-01T00:00:00Z"}
    assert inc.source_units({"units": {"a": 3, "b": "x", "c": None}}, False) == {"a": 3}
    assert inc.source_units("junk", False) == {}


# ---------------------------------------------------------------- files


def test_the_state_a_run_started_from_is_fixed_in_its_work_directory(tmp_path: Path):
    spec = spec_of({"name": "s", "url": "http://127.0.0.1:9/c", "incremental": TIME})
    first = inc.started_state(spec, tmp_path, {"s": {"cursor": "2024-02-01T00:00:00Z"}})
    assert first == [{"": "2024-02-01T00:00:00Z"}]
    # a resumed run (same work directory) ignores what is saved by then
    assert inc.started_state(spec, tmp_path, {"s": {"cursor": "2024-09-01T00:00:00Z"}}) == first
    assert inc.started_state(spec, tmp_path / "other", None) == [{}]
    assert inc.started_state(spec_of({"url": "http://127.0.0.1:9/c"}), tmp_path / "plain", {}) is None
    assert not (tmp_path / "plain").exists()


def test_state_file_round_trip_atomic_and_refusals(tmp_path: Path):
    path = tmp_path / "state" / "job.json"
    assert inc.read_state_file(path) == {}
    inc.write_state_file(path, "job", {"s": {"cursor": 5}})
    assert inc.read_state_file(path) == {"s": {"cursor": 5}}
    assert json.loads(path.read_text())["name"] == "job"
    assert [p.name for p in path.parent.iterdir()] == ["job.json"]  # no temp file left
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        inc.read_state_file(path)
    spec = spec_of({"url": "http://127.0.0.1:9/c", "incremental": TIME})
    with pytest.raises(SpecError) as refused:
        inc.load_for_run(str(path), spec)
    assert refused.value.details[0].field == "--state"
    assert inc.load_for_run(str(path), spec_of({"url": "http://127.0.0.1:9/c"})) == (None, None)


def test_save_after_run_merges_with_the_file(tmp_path: Path):
    path = tmp_path / "job.json"
    spec = spec_of({"name": "s", "url": "http://127.0.0.1:9/c", "incremental": TIME})
    inc.write_state_file(path, "job", {"s": {"cursor": "2024-06-01T00:00:00Z"}, "old": {"cursor": 1}})
    shown = inc.save_after_run(path, spec, {"s": {"cursor": "2024-05-01T00:00:00Z"}})
    assert shown == {"s": {"cursor": "2024-06-01T00:00:00Z"}}  # a later run saved meanwhile: kept
    assert inc.read_state_file(path)["old"] == {"cursor": 1}


def test_shards_carry_cursors_only_when_incremental():
    info = ShardInfo(0, (0, 1), (0, 2), cursors={"": "2024-01-01T00:00:00Z", "x": None})
    meta = json.loads(json.dumps(info.metadata()))
    assert ShardInfo.from_metadata(meta, Path("s.arrow")).cursors == info.cursors
    plain = ShardInfo(0, (0, 1), (0, 2)).metadata()
    assert "cursors" not in plain and ShardInfo.from_metadata(plain, Path("s.arrow")).cursors == {}


def test_later_treats_unreadable_values_as_absent():
    assert inc.later(None, "2024-01-01T00:00:00Z", True) == "2024-01-01T00:00:00Z"
    assert inc.later("2024-01-01T00:00:00Z", "garbage", True) == "2024-01-01T00:00:00Z"
    assert inc.later("garbage", None, True) is None
    assert inc.later(3, True, False) == 3  # a boolean is no number
    assert inc.later(2, 2.5, False) == 2.5


def test_page_max_of_uniform_utc_times_and_of_a_text_only_shaped_like_one():
    uniform = [{"updated_at": f"2024-01-01T00:{m:02d}:00.5Z"} for m in (5, 59, 7)] + [{"updated_at": None}]
    parsed = page(uniform)
    assert inc.SourceBounds(source_of(), {}).page_max(parsed.table, parsed.doc) == "2024-01-01T00:59:00.5Z"
    shaped = page([{"updated_at": "2024-01-01T05:00:00Z"}, {"updated_at": "2024-13-99T99:99:99Z"}])
    assert inc.SourceBounds(source_of(), {}).page_max(shaped.table, shaped.doc) == "2024-01-01T05:00:00Z"
    empty = page([{"updated_at": None}, {"id": 1}])
    assert inc.SourceBounds(source_of(), {}).page_max(empty.table, empty.doc) is None
