"""Stored inputs and configuration (the seed's API) and how they become a job spec, so a
client can build a job step by step and start it without sending the spec."""

from __future__ import annotations

import re
from typing import Any

from engine import COLUMN_TYPES, FieldError, JobSpec, Source, SpecError, output_order

PROFILE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
INPUT_FIELDS = {"name", "column", "source", "change_order", "order", "type", "on_cast_error"}
SEED_FIELDS = {
    "source_url": "sources.0.url",
    "file_type": "export.format",
    "page_limit": "sources.0.max_pages",
    "rate_limit": "rate_limit",
}
JOB_FIELDS = set(JobSpec.model_fields) - {"sources"}
SOURCE_FIELDS = set(Source.model_fields) - {"name"}


def check_profile_name(name: str | None) -> str:
    name = name or "default"
    if not PROFILE_NAME.fullmatch(name):
        raise SpecError([FieldError("X-Profile", "must be 1-64 letters, digits, '_', '-' or '.'")])
    return name


def check_input(item: Any, at: str = "") -> dict:
    """One stored input, validated and normalised (`change_order` kept, as the seed named it)."""
    prefix = f"{at}." if at else ""
    if not isinstance(item, dict):
        raise SpecError([FieldError(at or "input", "must be a JSON object")])
    problems = [FieldError(f"{prefix}{k}", "unknown field") for k in item if k not in INPUT_FIELDS]
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(FieldError(f"{prefix}name", "field required: a non-empty string"))
    column = item.get("column")
    if column is not None and (isinstance(column, bool) or not isinstance(column, int) or column < 0):
        problems.append(FieldError(f"{prefix}column", "must be a non-negative integer (0-based field index)"))
    source = item.get("source")
    if source is not None and (not isinstance(source, str) or not source):
        problems.append(FieldError(f"{prefix}source", "must be a non-empty dotted path"))
    if column is not None and source is not None:
        problems.append(FieldError(f"{prefix}column", "give column or source, not both"))
    order = item.get("change_order", item.get("order"))
    if order is not None and (isinstance(order, bool) or not isinstance(order, int)):
        problems.append(FieldError(f"{prefix}change_order", "must be an integer"))
    kind = item.get("type")
    if kind is not None and kind not in COLUMN_TYPES:
        problems.append(FieldError(f"{prefix}type", f"must be one of {', '.join(COLUMN_TYPES)}"))
    if item.get("on_cast_error") not in (None, "fail", "null"):
        problems.append(FieldError(f"{prefix}on_cast_error", "must be 'fail' or 'null'"))
    if problems:
        raise SpecError(problems)
    assert isinstance(name, str)  # a missing or non-string name was reported above
    out = {"name": name.strip()}
    for key in ("column", "source", "type", "on_cast_error"):
        if item.get(key) is not None:
            out[key] = item[key]
    if order is not None:
        out["change_order"] = order
    return out


def upsert_inputs(current: list[dict], new: list[dict]) -> list[dict]:
    """Add or replace inputs by name, keeping the position of replaced ones."""
    inputs = list(current)
    for item in new:
        for i, existing in enumerate(inputs):
            if existing["name"] == item["name"]:
                inputs[i] = item
                break
        else:
            inputs.append(item)
    return inputs


def in_output_order(inputs: list[dict]) -> list[dict]:
    """Inputs as the export's columns come out: by `change_order`, ties in list order, inputs
    without one after them in list order - the very rule the shaping applies to `columns`."""
    return [inputs[i] for i in output_order([item.get("change_order") for item in inputs])]


def as_columns(inputs: list[dict]) -> list[dict]:
    columns = []
    for item in inputs:
        column = {"name": item["name"]}
        for key in ("column", "source", "type", "on_cast_error"):
            if key in item:
                column[key] = item[key]
        if "change_order" in item:
            column["order"] = item["change_order"]
        columns.append(column)
    return columns


def merge_configuration(current: dict, change: Any) -> dict:
    if not isinstance(change, dict):
        raise SpecError([FieldError("configuration", "must be a JSON object")])
    unknown = [
        k for k in change if k not in SEED_FIELDS and k not in JOB_FIELDS and k not in SOURCE_FIELDS and k != "sources"
    ]
    if unknown:
        raise SpecError([FieldError(k, "unknown field") for k in unknown])
    merged = dict(current)
    for key, value in change.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def spec_from_profile(profile: dict, require_source: bool = True) -> dict:
    """The job spec (as a document) that stored inputs + configuration describe.

    An input `{name, column | source, change_order, type}` is a `columns` entry (`order` =
    `change_order`); configuration maps `source_url` (→ `sources[0].url`), `file_type`
    (→ `export.format`), `rate_limit` (requests per second), `page_limit` (→
    `sources[0].max_pages`), and any other spec field by its own name: job-level fields as they
    are, source-level fields (`pagination`, `records`, `params`, ...) for the one source.
    `configure` merges into what is stored (a null value removes a field)."""
    config = dict(profile.get("configuration") or {})
    spec: dict[str, Any] = {}
    source: dict[str, Any] = {}
    if "source_url" in config:
        source["url"] = config.pop("source_url")
    if "page_limit" in config:
        source["max_pages"] = config.pop("page_limit")
    if "file_type" in config:
        spec.setdefault("export", {})["format"] = config.pop("file_type")
    for key, value in config.items():
        if key == "export" and isinstance(value, dict):
            spec["export"] = {**value, **spec.get("export", {})}
        elif key in SOURCE_FIELDS:
            source[key] = value
        else:
            spec[key] = value
    if source:
        if "sources" in spec:
            raise SpecError(
                [FieldError("sources", "give `sources` or source fields (source_url, pagination, ...), not both")]
            )
        spec["sources"] = [source]
    if require_source and not spec.get("sources"):
        raise SpecError(
            [
                FieldError(
                    "source_url", "no source configured: POST /api/export/configure with source_url (or sources) first"
                )
            ]
        )
    inputs = profile.get("inputs") or []
    if inputs and "columns" not in spec:
        spec["columns"] = as_columns(inputs)
    return spec


def seed_path(field: str) -> str:
    """A spec field path as the seed API names it, for errors about configured fields."""
    for seed, path in SEED_FIELDS.items():
        if field == path or field.startswith(path + "."):
            return seed + field[len(path) :]
    if field.startswith("sources.0.") and field.split(".")[2] in SOURCE_FIELDS:
        return field[len("sources.0.") :]
    return field
