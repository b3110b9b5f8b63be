"""engine/fanout.py: ids × date-window units (contract §1 Fan-out)."""

from __future__ import annotations

import datetime as dt
from urllib.parse import quote

import pytest

from engine.errors import SpecError
from engine.plan.fanout import ID_COLUMN, WINDOW_COLUMN, FanOut, Unit, date_windows, parse_id_csv, read_id_file
from engine.spec.models import parse_spec

URL = "https://api.example.com/v1/orders"


def source(**fields):
    return parse_spec({"sources": [{"url": URL, **fields}]}).sources[0]


def reference_windows(start: dt.date, end: dt.date, days: int) -> list[tuple[dt.date, dt.date]]:
    """Independent computation: list every day, cut the list into chunks of `days`."""
    all_days = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
    return [(chunk[0], chunk[-1]) for chunk in (all_days[i : i + days] for i in range(0, len(all_days), days))]


# ------------------------------------------------------------------ date_windows


def test_weekly_windows_over_2024():
    start, end = dt.date(2024, 1, 1), dt.date(2024, 12, 31)
    windows = date_windows(start, end, 7)
    assert windows == reference_windows(start, end, 7)
    assert len(windows) == 53  # 366 days = 52 weeks + 2 days
    assert windows[0] == (dt.date(2024, 1, 1), dt.date(2024, 1, 7))
    assert windows[-1] == (dt.date(2024, 12, 30), dt.date(2024, 12, 31))  # the short last window
    # consecutive and non-overlapping, covering start..end inclusive
    for (_, a_last), (b_first, _) in zip(windows, windows[1:]):
        assert b_first == a_last + dt.timedelta(days=1)
    assert sum((b - a).days + 1 for a, b in windows) == 366


@pytest.mark.parametrize(
    "start, end, days",
    [
        (dt.date(2024, 1, 1), dt.date(2024, 1, 10), 1),
        (dt.date(2024, 2, 20), dt.date(2024, 3, 5), 3),  # over a leap day
        (dt.date(2023, 12, 1), dt.date(2024, 2, 1), 30),
        (dt.date(2024, 1, 1), dt.date(2024, 1, 14), 7),  # exact fit: no short window
        (dt.date(2024, 1, 1), dt.date(2024, 1, 5), 100),  # one window, shorter than days
    ],
)
def test_windows_match_the_reference(start, end, days):
    assert date_windows(start, end, days) == reference_windows(start, end, days)


def test_days_one_gives_one_window_per_day():
    windows = date_windows(dt.date(2024, 2, 27), dt.date(2024, 3, 1), 1)
    assert windows == [
        (dt.date(2024, 2, 27),) * 2,
        (dt.date(2024, 2, 28),) * 2,
        (dt.date(2024, 2, 29),) * 2,
        (dt.date(2024, 3, 1),) * 2,
    ]


def test_start_equals_end_is_one_window():
    day = dt.date(2024, 6, 15)
    assert date_windows(day, day, 7) == [(day, day)]


# ------------------------------------------------------------------ units


def test_no_fanout_is_one_unit():
    f = FanOut(source())
    assert f.count == 1 and f.used is False
    assert f.unit(0) == Unit(0, None, None)
    assert f.request_base(f.unit(0)) == (URL, {})
    assert f.columns(f.unit(0)) == {}


def test_ids_values_keep_their_order():
    f = FanOut(source(url=URL + "/{id}", ids={"values": [30, 10, 20]}))
    assert f.count == 3 and f.used is True
    assert [f.unit(i).id for i in range(3)] == [30, 10, 20]
    assert f.ids_are_ints is True
    assert [f.unit(i).ordinal for i in range(3)] == [0, 1, 2]


def test_mixed_id_values_become_strings():
    f = FanOut(source(url=URL + "/{id}", ids={"values": [1, "b", 2.5]}))
    assert f.ids_are_ints is False
    assert [f.unit(i).id for i in range(3)] == ["1", "b", "2.5"]


def test_id_range_is_end_exclusive():
    f = FanOut(source(url=URL + "/{id}", ids={"range": {"start": 1, "end": 5}}))
    assert f.count == 4
    assert [f.unit(i).id for i in range(f.count)] == [1, 2, 3, 4]
    assert f.ids_are_ints is True


def test_id_range_with_step_and_negative_step():
    f = FanOut(source(url=URL + "/{id}", ids={"range": {"start": 0, "end": 10, "step": 3}}))
    assert [f.unit(i).id for i in range(f.count)] == [0, 3, 6, 9]
    f = FanOut(source(url=URL + "/{id}", ids={"range": {"start": 10, "end": 0, "step": -3}}))
    assert [f.unit(i).id for i in range(f.count)] == [10, 7, 4, 1]


def test_big_range_costs_no_memory_and_is_addressable():
    f = FanOut(source(url=URL + "/{id}", ids={"range": {"start": 0, "end": 5_000_000}}))
    assert f.count == 5_000_000
    assert f.unit(4_999_999).id == 4_999_999


def test_ids_file_values():
    s = source(url="{id}", ids={"file": "ids.csv", "column": "url"})
    with pytest.raises(ValueError):
        FanOut(s)  # the file must be read first
    f = FanOut(s, id_values=["https://a.example.com/1", "https://b.example.com/2"])
    assert f.count == 2
    assert [f.unit(i).id for i in range(2)] == ["https://a.example.com/1", "https://b.example.com/2"]


def test_ids_times_windows_in_order():
    f = FanOut(
        source(
            url=URL + "/{id}",
            ids={"values": ["a", "b", "c"]},
            windows={"start": "2024-01-01", "end": "2024-01-10", "days": 5},
        )
    )
    w1 = (dt.date(2024, 1, 1), dt.date(2024, 1, 5))
    w2 = (dt.date(2024, 1, 6), dt.date(2024, 1, 10))
    assert f.count == 6
    assert [(f.unit(i).id, f.unit(i).window) for i in range(6)] == [
        ("a", w1),
        ("a", w2),
        ("b", w1),
        ("b", w2),
        ("c", w1),
        ("c", w2),
    ]


def test_windows_only():
    f = FanOut(source(windows={"start": "2024-01-01", "end": "2024-01-03", "days": 2}))
    assert f.count == 2 and f.used is True
    assert [f.unit(i).window for i in range(2)] == [
        (dt.date(2024, 1, 1), dt.date(2024, 1, 2)),
        (dt.date(2024, 1, 3), dt.date(2024, 1, 3)),
    ]
    assert f.unit(0).id is None


# ------------------------------------------------------------------ request_base


def test_id_is_url_encoded_into_the_url():
    value = "a b/c?d&e#f"
    f = FanOut(source(url=URL + "/{id}/items", params={"x": 1}, ids={"values": [value, 7]}))
    url, params = f.request_base(f.unit(0))
    assert url == URL + "/" + quote(value, safe="") + "/items"
    assert url == URL + "/a%20b%2Fc%3Fd%26e%23f/items"
    assert params == {"x": 1}  # no ids.param: not sent as a parameter
    assert f.request_base(f.unit(1))[0] == URL + "/7/items"


def test_whole_url_id():
    target = "https://other.example.com/files/a b?x=1"
    f = FanOut(source(url="{id}", ids={"values": [target]}))
    assert f.request_base(f.unit(0)) == (target, {})


def test_ids_param():
    f = FanOut(source(params={"fields": "all"}, ids={"values": [5, 6], "param": "customer"}))
    assert f.request_base(f.unit(1)) == (URL, {"fields": "all", "customer": 6})


def test_windows_params_and_defaults():
    f = FanOut(
        source(
            windows={"start": "2024-01-01", "end": "2024-01-14", "days": 7, "start_param": "from", "end_param": "to"}
        )
    )
    assert f.request_base(f.unit(1)) == (URL, {"from": "2024-01-08", "to": "2024-01-14"})
    f = FanOut(source(windows={"start": "2024-01-01", "end": "2024-01-14", "days": 7}))
    assert f.request_base(f.unit(0)) == (URL, {"start": "2024-01-01", "end": "2024-01-07"})


def test_windows_placeholders_in_url_and_date_format():
    f = FanOut(
        source(
            url=URL + "/{start}/{end}",
            windows={
                "start": "2024-03-01",
                "end": "2024-03-31",
                "days": 31,
                "start_param": None,
                "end_param": None,
                "date_format": "%Y%m%d",
            },
        )
    )
    assert f.request_base(f.unit(0)) == (URL + "/20240301/20240331", {})


def test_ids_and_windows_together():
    f = FanOut(
        source(
            url=URL + "/{id}?since={start}",
            ids={"values": ["x"]},
            windows={"start": "2024-01-01", "end": "2024-01-02", "days": 1, "end_param": None},
        )
    )
    assert f.request_base(f.unit(1)) == (URL + "/x?since=2024-01-02", {"start": "2024-01-02"})


# ------------------------------------------------------------------ columns


def test_columns_tell_units_apart():
    f = FanOut(
        source(
            url=URL + "/{id}", ids={"values": [1, 2]}, windows={"start": "2024-01-01", "end": "2024-01-02", "days": 1}
        )
    )
    assert f.columns(f.unit(3)) == {ID_COLUMN: 2, WINDOW_COLUMN: dt.date(2024, 1, 2)}
    only_ids = FanOut(source(url=URL + "/{id}", ids={"values": ["a"]}))
    assert only_ids.columns(only_ids.unit(0)) == {ID_COLUMN: "a"}
    only_windows = FanOut(source(windows={"start": "2024-01-01", "end": "2024-01-02", "days": 1}))
    assert only_windows.columns(only_windows.unit(0)) == {WINDOW_COLUMN: dt.date(2024, 1, 1)}


def test_check_urls_for_whole_url_fanout():
    f = FanOut(source(url="{id}", ids={"values": ["https://ok.example.com/", "ftp://x/y", "nope"]}))
    problems = f.check_urls(0)
    assert [p.field for p in problems] == ["sources.0.ids.values.1", "sources.0.ids.values.2"]
    assert "value 2" in problems[0].message and "value 3" in problems[1].message
    assert FanOut(source(url=URL + "/{id}", ids={"values": ["nope"]})).check_urls(0) == []


# ------------------------------------------------------------------ id files


def test_parse_id_csv_first_column_and_named_column():
    raw = b"\xef\xbb\xbfid,url\n 1 ,https://a.example.com/1\n\n2,https://a.example.com/2\n,\n3,\n"
    assert parse_id_csv(raw, None) == ["1", "2", "3"]  # BOM stripped, values trimmed, blanks skipped
    assert parse_id_csv(raw, "url") == ["https://a.example.com/1", "https://a.example.com/2"]


def _spec_error(raw, column):
    with pytest.raises(SpecError) as info:
        parse_id_csv(raw, column)
    (detail,) = info.value.details
    return detail


def test_parse_id_csv_empty_file():
    detail = _spec_error(b"", None)
    assert detail.field == "ids.file" and "empty" in detail.message


def test_parse_id_csv_missing_column_names_the_columns():
    detail = _spec_error(b"id,name\n1,a\n", "url")
    assert detail.field == "ids.column"
    assert "'url'" in detail.message and "id, name" in detail.message


def test_parse_id_csv_not_utf8():
    detail = _spec_error(b"id\n\xff\xfe1\n", None)
    assert detail.field == "ids.file" and "UTF-8" in detail.message


def test_parse_id_csv_no_values():
    detail = _spec_error(b"id,url\n,\n \n", "url")
    assert detail.field == "ids.file" and "no values" in detail.message and "'url'" in detail.message


def test_parse_id_csv_custom_field_name():
    with pytest.raises(SpecError) as info:
        parse_id_csv(b"a\n1\n", "b", field="sources.2.ids.file")
    assert info.value.details[0].field == "sources.2.ids.column"  # the field to change


def test_read_id_file(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("url\nhttps://x.example.com/1\n")
    assert read_id_file(path, "url") == ["https://x.example.com/1"]
    with pytest.raises(SpecError) as info:
        read_id_file(tmp_path / "missing.csv", None)
    assert info.value.details[0].field == "ids.file" and "missing.csv" in info.value.details[0].message


# ------------------------------------------------------------------ dependent sources (ids.from), batches


def spec_with_child(child: dict | None = None, parent: dict | None = None):
    return parse_spec(
        {
            "sources": [
                {"name": "parents", "url": URL, **(parent or {})},
                {"name": "children", "url": URL + "/{id}", "ids": {"from": "parents"}, **(child or {})},
            ],
            "export": {"format": "zip"},
        }
    )


def test_a_child_without_its_values_is_pending_and_has_no_units():
    child = spec_with_child().sources[1]
    pending = FanOut(child)
    assert pending.pending is True and pending.count == 0
    known = FanOut(child, [30, 10, 20, 10])
    assert known.pending is False and known.count == 4
    assert [known.unit(i).id for i in range(4)] == [30, 10, 20, 10]  # the parent's order, repeats kept
    assert known.ids_are_ints is True
    assert known.columns(known.unit(1)) == {ID_COLUMN: 10}
    assert known.request_base(known.unit(0)) == (URL + "/30", {})
    text = FanOut(child, ["a", 7])
    assert [text.unit(i).id for i in range(2)] == ["a", "7"]  # mixed: text, as for listed values


def test_batches_join_consecutive_values_in_order():
    child = spec_with_child({"url": URL + "?ids={id}", "ids": {"from": "parents", "batch": 3}}).sources[1]
    f = FanOut(child, list(range(1, 8)))
    assert f.count == 3 and f.ids_are_ints is False
    assert [f.unit(i).id for i in range(3)] == ["1,2,3", "4,5,6", "7"]
    assert f.request_base(f.unit(0)) == (URL + "?ids=1,2,3", {})  # the separator stays as written
    assert f.columns(f.unit(2)) == {ID_COLUMN: "7"}
    with pytest.raises(IndexError):
        f.unit(3)


def test_batch_with_param_and_separator_and_encoded_values():
    child = spec_with_child(
        {"url": URL + "/{id}", "ids": {"from": "parents", "batch": 2, "separator": "|", "param": "q"}}
    ).sources[1]
    f = FanOut(child, ["a b", "c/d", "e"])
    assert f.count == 2
    url, params = f.request_base(f.unit(0))
    assert url == URL + "/a%20b%7Cc%2Fd"  # `|` is not left bare in a URL; values are encoded
    assert params == {"q": "a b|c/d"}
    assert f.request_base(f.unit(1)) == (URL + "/e", {"q": "e"})


def test_batches_of_a_range_and_of_listed_values():
    f = FanOut(source(url=URL + "/{id}", ids={"range": {"start": 0, "end": 1_000_000}, "batch": 1000}))
    assert f.count == 1000
    assert f.unit(999).id == ",".join(str(v) for v in range(999_000, 1_000_000))
    g = FanOut(source(url=URL + "/{id}", ids={"values": [1, 2, 3], "batch": 2}))
    assert [g.unit(i).id for i in range(g.count)] == ["1,2", "3"]


def _write_parent_shard(directory, first_unit: int, rows: dict):
    import pyarrow as pa

    from engine.shards import ShardInfo, write_shard

    table = pa.table(rows)
    info = ShardInfo(0, (first_unit, 1), (first_unit, 1), pages=1, records=table.num_rows)
    return str(write_shard(directory, table, info))


def test_parent_values_in_row_order_nulls_skipped(tmp_path):
    import pyarrow as pa

    from engine.plan.fanout import parent_values

    paths = [
        _write_parent_shard(tmp_path, 0, {"id": [5, 3], "account.id": pa.array([105.0, None])}),
        _write_parent_shard(tmp_path, 1, {"id": [9]}),  # no account at all on this page
        _write_parent_shard(tmp_path, 2, {"id": [1, 4], "account.id": pa.array([101.0, 104.5])}),
    ]
    found = parent_values(paths, "account.id")
    assert found.values == [105, 101, 104.5]  # whole floats become ints; nulls and missing skipped
    assert isinstance(found.values[0], int)
    assert found.records == 5 and found.found is True
    assert parent_values(paths, "id").values == [5, 3, 9, 1, 4]
    missing = parent_values(paths, "nope")
    assert missing.values == [] and missing.found is False and missing.columns == ["id", "account.id"]


def test_parent_values_refuse_lists(tmp_path):
    from engine.plan.fanout import parent_values

    path = _write_parent_shard(tmp_path, 0, {"tags": [["a"], ["b"]]})
    with pytest.raises(ValueError, match="lists or objects"):
        parent_values([path], "tags")


def _one_page(source: int, unit: int):
    from engine.shards import ShardInfo

    return ShardInfo(source, (unit, 1), (unit, 1), pages=1, records=1, ends={unit: 1})


def test_scheduler_plans_a_child_only_once_its_values_are_known():
    from engine.plan.scheduler import PieceResult, Scheduler

    spec = spec_with_child()
    fanouts = [FanOut(spec.sources[0]), FanOut(spec.sources[1])]
    scheduler = Scheduler(spec, fanouts, threads=4, ledger=[_one_page(1, 0)])  # a child shard from a run before
    assert scheduler.deferred_shards(1) == [_one_page(1, 0)]
    piece = scheduler.next_piece()
    assert piece is not None and piece.source == 0
    assert scheduler.next_piece() is None  # the child has nothing to plan yet
    assert scheduler.waiting() == [] and not scheduler.done()
    scheduler.settle(piece, PieceResult(piece.id, shards=[_one_page(0, 0)]))
    assert scheduler.waiting() == [1] and not scheduler.done()
    assert scheduler.sources[1].pages_total() is None
    scheduler.set_fanout(1, FanOut(spec.sources[1], [7, 8, 9]))
    assert scheduler.waiting() == []
    child = scheduler.next_piece()
    assert child is not None and child.source == 1
    assert [s.unit for s in child.spans] == [1, 2]  # unit 0 came from the earlier run's shard
    scheduler.settle(child, PieceResult(child.id, shards=[_one_page(1, 1), _one_page(1, 2)]))
    assert scheduler.done()


def test_scheduler_forgets_a_childs_shards_fetched_for_other_ids():
    from engine.plan.scheduler import Scheduler

    spec = spec_with_child()
    scheduler = Scheduler(
        spec, [FanOut(spec.sources[0]), FanOut(spec.sources[1])], 4, [_one_page(0, 0), _one_page(1, 0)]
    )
    assert scheduler.waiting() == [1]  # the parent is complete on disk
    scheduler.set_fanout(1, FanOut(spec.sources[1], [7]), keep=False)
    piece = scheduler.next_piece()
    assert piece is not None and piece.source == 1 and [s.unit for s in piece.spans] == [0]


def test_prepare_accepts_a_child_and_checks_its_values_later():
    from engine.fetch.outbound import OutboundPolicy
    from engine.spec.prepare import check_child, prepare

    spec = parse_spec(
        {
            "sources": [
                {"name": "parents", "url": URL, "export": False},
                {"name": "children", "url": "{id}", "ids": {"from": "parents", "field": "href"}},
            ]
        }
    )
    prepared = prepare(spec, {})
    assert [f.count for f in prepared.fanouts] == [1, 0] and prepared.fanouts[1].pending
    child = prepared.resolved.sources[1]
    problems = check_child(1, child, FanOut(child, ["https://ok.example.com/1", "not a url"]), OutboundPolicy())
    assert [p.field for p in problems] == ["sources.1.ids.field"] and "value 2" in problems[0].message
    assert check_child(1, child, FanOut(child, ["https://ok.example.com/1"]), OutboundPolicy()) == []


def test_prepare_refuses_batches_of_whole_urls():
    from engine.spec.prepare import prepare

    spec = parse_spec(
        {
            "sources": [
                {"name": "parents", "url": URL, "export": False},
                {"name": "children", "url": "{id}", "ids": {"from": "parents", "field": "href", "batch": 10}},
            ]
        }
    )
    with pytest.raises(SpecError) as info:
        prepare(spec, {})
    assert [d.field for d in info.value.details] == ["sources.1.ids.batch"]


def test_parent_values_name_an_unreadable_shard_in_plain_text(tmp_path):
    from engine.plan.fanout import parent_values

    path = tmp_path / "s000_u0000000_p0000001_u0000000_p0000001.arrow"
    path.write_bytes(b"not arrow at all")
    with pytest.raises(RuntimeError, match=path.name) as info:
        parent_values([str(path)], "id")
    assert type(info.value) is RuntimeError  # not an Arrow class the coordinator would need pyarrow to unpickle
