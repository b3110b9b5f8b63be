"""The job spec (docs/spec.md) as typed, immutable models, validated once by `parse_spec` so
every later stage can trust it. Errors name each field by its dotted path
(`sources.0.pagination.size`); `${NAME}` references are kept as written here and resolved
only in the process that runs the job (`engine.spec.redact`).
"""

from __future__ import annotations

import codecs
import datetime as dt
import math
import re
from fractions import Fraction
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from engine.errors import FieldError, SpecError

EXPORT_FORMATS = ("csv", "json", "ndjson", "xlsx", "parquet", "zip")
SINGLE_FILE_FORMATS = ("csv", "json", "ndjson", "xlsx", "parquet")
PAGINATION_TYPES = ("none", "page", "offset", "cursor", "next_url", "link")
COLUMN_TYPES = ("string", "int", "float", "bool", "date", "datetime")
FILTER_OPS = ("==", "!=", ">", ">=", "<", "<=", "in", "not_in", "contains", "starts_with", "is_null", "not_null")
AGGREGATIONS = ("sum", "mean", "min", "max", "count", "n_unique", "first", "last")
FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})  # the client's own
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,99}\Z")  # use fullmatch


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def _scalar(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)):
        return value
    raise ValueError("must be a string, number or boolean")


Scalar = Annotated[Any, BeforeValidator(_scalar)]


def _has_placeholder(url: str) -> bool:
    return bool(ENV_REF.search(url)) or any(p in url for p in ("{id}", "{start}", "{end}"))


def check_http_url(url: str) -> str | None:
    """Return why `url` is not an absolute http(s) URL, or None when it is."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    return None


def _http_url_or_ref(value: str) -> str:
    """An absolute http(s) URL; a `${NAME}` reference is checked once resolved (prepare)."""
    problem = None if ENV_REF.search(value) else check_http_url(value)
    if problem:
        raise ValueError(problem)
    return value


HttpUrlOrRef = Annotated[str, AfterValidator(_http_url_or_ref)]


# ---------------------------------------------------------------- sources


class CsvSourceOptions(Model):
    separator: str = Field(",", min_length=1, max_length=1)
    encoding: str = "utf-8"
    header: bool = True
    null_values: tuple[str, ...] = ()  # an empty field stays "" (text as written)
    skip_rows: int = Field(0, ge=0)
    infer_types: bool = False  # true: whole columns of plain integers/decimals become numbers

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        return value


_PAGINATION_FIELDS = {
    "none": set(),
    "page": {"param", "start", "size_param", "size", "total_pages", "total_records", "in_"},
    "offset": {"param", "start", "size_param", "size", "total_records", "in_"},
    "cursor": {"param", "next", "has_more", "in_", "size_param", "size"},
    "next_url": {"next"},
    "link": set(),
}
HEADER_PREFIX = "header:"  # `total_pages`/`total_records`/`next` read from a response header
_PAGINATION_DEFAULTS: dict[str, dict[str, Any]] = {
    "page": {"param": "page", "start": 1, "size_param": "per_page"},
    "offset": {"param": "offset", "start": 0, "size_param": "limit"},
    "cursor": {"param": "cursor", "next": "next_cursor"},
    "next_url": {"next": "next"},
}


class Pagination(Model):
    """One model for every pagination style; which fields apply depends on `type`."""

    type: Literal["none", "page", "offset", "cursor", "next_url", "link"] = "none"
    param: str | None = Field(None, min_length=1)
    start: int | None = Field(None, ge=0)
    size_param: str | None = Field(None, min_length=1)
    size: int | None = Field(None, ge=1, le=1_000_000)
    total_pages: str | None = Field(None, min_length=1)
    total_records: str | None = Field(None, min_length=1)
    next: str | None = Field(None, min_length=1)
    has_more: str | None = Field(None, min_length=1)  # cursor: dotted path to a boolean (false: stop)
    in_: Literal["query", "body"] | None = Field(None, alias="in")  # where param/size_param go

    @property
    def location(self) -> str:
        return self.in_ or "query"

    @model_validator(mode="before")
    @classmethod
    def _type_defaults(cls, data: Any) -> Any:
        kind = data.get("type", "none") if isinstance(data, dict) else None
        if not isinstance(kind, str) or kind not in _PAGINATION_FIELDS:
            return data  # the Literal reports an unknown type
        given = {k: v for k, v in data.items() if v is not None}
        defaults = {k: v for k, v in _PAGINATION_DEFAULTS.get(kind, {}).items() if k not in given}
        return {**defaults, **given}

    @field_validator("param", "start", "size_param", "size", "total_pages", "total_records", "next", "has_more", "in_")
    @classmethod
    def _applies_to_type(cls, value: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("type")
        if value is not None and kind in _PAGINATION_FIELDS and info.field_name not in _PAGINATION_FIELDS[kind]:
            shown = "in" if info.field_name == "in_" else info.field_name
            raise ValueError(f"field {shown!r} does not apply to pagination type {kind!r}")
        return value

    @field_validator("total_pages", "total_records", "next")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if value is not None and value.lower().startswith(HEADER_PREFIX):
            name = value[len(HEADER_PREFIX) :].strip()
            if not name or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise ValueError("'header:' must be followed by a header name, e.g. header:X-Total-Count")
        return value

    def from_header(self, field_name: str) -> str | None:
        """The response header a value is read from (`header:X-Total-Count`), or None (a body path)."""
        value = getattr(self, field_name)
        if isinstance(value, str) and value.lower().startswith(HEADER_PREFIX):
            return value[len(HEADER_PREFIX) :].strip()
        return None


class IdRange(Model):
    start: int
    end: int
    step: int = 1

    @model_validator(mode="after")
    def _finite(self) -> IdRange:
        if self.step == 0:
            raise ValueError("step must not be 0")
        # counted by arithmetic: len(range(...)) overflows beyond a C ssize_t
        count = max(0, -((self.start - self.end) // self.step))
        if count == 0:
            raise ValueError("range is empty (end is exclusive)")
        if count > 10_000_000:
            raise ValueError("range has more than 10,000,000 values")
        return self


class IdsFanout(Model):
    values: tuple[Scalar, ...] | None = None
    range: IdRange | None = None
    file: str | None = Field(None, min_length=1)
    column: str | None = Field(None, min_length=1)
    from_: str | None = Field(None, alias="from", min_length=1)  # a parent source's name
    field: str = Field("id", min_length=1)  # with `from`: dotted path in the parent's records
    batch: int = Field(1, ge=1, le=10_000)  # values joined into one `{id}`
    separator: str = ","
    param: str | None = Field(None, min_length=1)

    @field_validator("values")
    @classmethod
    def _some_values(cls, value: tuple | None) -> tuple | None:
        if value is not None and not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("column")
    @classmethod
    def _column_with_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("file") is None:
            raise ValueError("applies only with file")
        return value

    @model_validator(mode="after")
    def _one_origin(self) -> IdsFanout:
        given = [k for k in ("values", "range", "file", "from_") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of values, range, file or from")
        if self.field != "id" and self.from_ is None:
            raise ValueError("field applies only with from (the parent source's records)")
        return self


class DateWindows(Model):
    start: dt.date
    end: dt.date
    days: int = Field(..., ge=1)
    start_param: str | None = Field("start", min_length=1)
    end_param: str | None = Field("end", min_length=1)
    date_format: str = "%Y-%m-%d"

    @field_validator("end")
    @classmethod
    def _after_start(cls, value: dt.date, info: ValidationInfo) -> dt.date:
        start = info.data.get("start")
        if start is not None and value < start:
            raise ValueError("must not be before start")
        return value

    @model_validator(mode="after")
    def _bounded(self) -> DateWindows:
        if (self.end - self.start).days // self.days > 1_000_000:
            raise ValueError("too many windows")
        return self


class BearerAuth(Model):
    type: Literal["bearer"]
    token: str = Field(..., min_length=1)


class HeaderAuth(Model):
    type: Literal["header"]
    name: str = Field(..., min_length=1)
    value: str = Field(..., min_length=1)


class QueryAuth(Model):
    type: Literal["query"]
    name: str = Field(..., min_length=1)
    value: str = Field(..., min_length=1)


class BasicAuth(Model):
    type: Literal["basic"]
    username: str
    password: str


class OAuth2Auth(Model):
    type: Literal["oauth2"]
    token_url: HttpUrlOrRef
    client_id: str = Field(..., min_length=1)
    client_secret: str = Field(..., min_length=1)
    scope: str | None = None


Auth = Annotated[BearerAuth | HeaderAuth | QueryAuth | BasicAuth | OAuth2Auth, Field(discriminator="type")]


class GraphQL(Model):
    query: str = Field(..., min_length=1, max_length=100_000)
    variables: dict[str, Any] = Field(default_factory=dict)


class ResponseRule(Model):
    """Checked in order before the default handling of a response (docs/sources.md)."""

    status: tuple[Annotated[int, Field(ge=100, le=599)], ...] | None = None
    path: str | None = Field(None, min_length=1)
    equals: Any = None
    action: Literal["skip", "retry", "fail"]

    @field_validator("status", mode="before")
    @classmethod
    def _one_status(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _one_condition(self) -> ResponseRule:
        if (self.status is None) == (self.path is None):
            raise ValueError("give status (a list of codes) or path with equals, not both")
        if self.status is not None and not self.status:
            raise ValueError("status must list at least one code")
        # a null `equals` beside `status` is what spec_to_json writes for a status rule
        if self.path is None and "equals" in self.model_fields_set and self.equals is not None:
            raise ValueError("equals applies only with path")
        if self.path is not None and "equals" not in self.model_fields_set:
            raise ValueError("path needs equals (the value that triggers the rule)")
        return self


class Incremental(Model):
    cursor: str = Field(..., min_length=1)  # dotted path in each record: an ISO-8601 time or a number
    param: str = Field(..., min_length=1)  # query parameter, `header:Name`, or a body path
    start: str | int | float
    lookback: float = Field(0, ge=0)

    @field_validator("start")
    @classmethod
    def _bound(cls, value: str | int | float) -> str | int | float:
        if isinstance(value, bool):
            raise ValueError("must be an ISO-8601 time or a number")
        if isinstance(value, str):
            try:
                dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError("must be an ISO-8601 time (2024-01-01T00:00:00Z) or a number") from None
        return value

    @field_validator("param")
    @classmethod
    def _param(cls, value: str) -> str:
        if value.lower().startswith(HEADER_PREFIX) and not value[len(HEADER_PREFIX) :].strip():
            raise ValueError("'header:' must be followed by a header name, e.g. header:If-Modified-Since")
        return value


class Source(Model):
    name: str
    url: str = Field(..., min_length=1)
    method: Literal["GET", "POST"] = "GET"
    params: dict[str, Scalar] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    format: Literal["json", "ndjson", "csv"] = "json"
    csv: CsvSourceOptions = CsvSourceOptions()
    records: str | None = Field(None, min_length=1)
    pagination: Pagination = Pagination()
    max_pages: int | None = Field(None, ge=1)
    auth: Auth | None = None
    ids: IdsFanout | None = None
    windows: DateWindows | None = None
    graphql: GraphQL | None = None
    responses: tuple[ResponseRule, ...] = ()
    incremental: Incremental | None = None
    export: bool = True  # false: fetched only for its records' ids (a parent), written nowhere

    @property
    def sends_body(self) -> bool:
        return self.body is not None or self.graphql is not None

    @property
    def in_body(self) -> bool:
        """Pagination parameters go into the JSON body (always so for GraphQL)."""
        if self.pagination.in_ is not None:
            return self.pagination.in_ == "body"
        return self.graphql is not None

    @property
    def parent(self) -> str | None:
        return self.ids.from_ if self.ids is not None else None

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _graphql_posts(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("graphql") is not None and data.get("method") is None:
            return {**data, "method": "POST"}
        return data

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not _has_placeholder(value):
            problem = check_http_url(value)
            if problem:
                raise ValueError(problem)
        return value


# ---------------------------------------------------------------- job level


class RateLimit(Model):
    requests: int = Field(..., ge=1, le=1_000_000)
    per: float = Field(1.0, gt=0, le=86_400)
    burst: int | None = Field(None, ge=1)
    budget: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")  # shared by jobs naming it

    @field_validator("burst")
    @classmethod
    def _burst(cls, value: int | None, info: ValidationInfo) -> int | None:
        requests = info.data.get("requests")
        if value is not None and requests is not None and value > requests:
            raise ValueError("must not exceed requests")
        return value

    @property
    def effective_burst(self) -> int:
        return self.burst or self.requests


def _rate_limit(value: Any) -> Any:
    """A bare number means requests per second (fractions allowed: 0.5 = 1 request per 2 s)."""
    if isinstance(value, bool):
        raise ValueError("must be a number or an object {requests, per, burst}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError("must be a positive, finite number")
        fraction = Fraction(value).limit_denominator(1000)
        return {"requests": fraction.numerator, "per": float(fraction.denominator)}
    return value


class Retry(Model):
    attempts: int = Field(5, ge=1, le=100)
    backoff: float = Field(0.5, ge=0, le=3600)
    max_backoff: float = Field(30.0, ge=0, le=3600)
    statuses: tuple[Annotated[int, Field(ge=100, le=599)], ...] = (429, 500, 502, 503, 504)


class Column(Model):
    name: str = Field(..., min_length=1)
    source: str | None = Field(None, min_length=1)
    column: int | None = Field(None, ge=0)
    type: Literal["string", "int", "float", "bool", "date", "datetime"] | None = None
    order: int | None = None
    on_cast_error: Literal["fail", "null"] = "fail"

    @field_validator("column")
    @classmethod
    def _one_origin(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("source") is not None:
            raise ValueError("give source or column, not both")
        return value


class Filter(Model):
    column: str = Field(..., min_length=1)
    op: Literal["==", "!=", ">", ">=", "<", "<=", "in", "not_in", "contains", "starts_with", "is_null", "not_null"]
    value: Any = None


class Aggregation(Model):
    column: str | None = Field(None, min_length=1)
    agg: Literal["sum", "mean", "min", "max", "count", "n_unique", "first", "last"]
    as_: str | None = Field(None, alias="as", min_length=1)

    @property
    def output_name(self) -> str:
        if self.as_:
            return self.as_
        return f"{self.column}_{self.agg}" if self.column else "count"


class GroupBy(Model):
    keys: tuple[str, ...]
    aggregations: tuple[Aggregation, ...]

    @field_validator("keys", "aggregations")
    @classmethod
    def _not_empty(cls, value: tuple) -> tuple:
        if not value:
            raise ValueError("must not be empty")
        return value


class SortKey(Model):
    column: str = Field(..., min_length=1)
    descending: bool = False

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"column": data} if isinstance(data, str) else data


def _distinct(value: Any) -> Any:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise ValueError("must be true, false or a non-empty list of column names")


class CsvExportOptions(Model):
    separator: str = Field(",", min_length=1, max_length=1)
    escape_formulas: bool = False


class Export(Model):
    format: Literal["csv", "json", "ndjson", "xlsx", "parquet", "zip"] = "csv"
    inner: Literal["csv", "json", "ndjson", "xlsx", "parquet"] = "csv"
    filename: str | None = None
    csv: CsvExportOptions = CsvExportOptions()

    @field_validator("filename")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        if value is not None and not NAME_PATTERN.fullmatch(value):
            raise ValueError(
                "must be 1-100 letters, digits, spaces, '_', '-' or '.', starting with a letter or digit (no paths)"
            )
        if value is not None and ".." in value:
            raise ValueError("must not contain '..'")
        return value

    @property
    def extension(self) -> str:
        return self.format


class Webhook(Model):
    url: HttpUrlOrRef
    secret: str | None = None
    timeout: float = Field(10.0, gt=0, le=300)
    attempts: int = Field(5, ge=1, le=20)
    backoff: float = Field(1.0, ge=0, le=300)  # seconds before the 2nd attempt, doubling (max 60 s)


class S3Target(Model):
    type: Literal["s3"]
    url: str = Field(..., pattern=r"^s3://[^/\s]+(?:/[^\r\n\x00]*)?\z")
    endpoint_url: HttpUrlOrRef | None = None
    access_key: str | None = None
    secret_key: str | None = None
    region: str | None = None
    inner_files: bool = False


class FtpTarget(Model):
    type: Literal["ftp"]
    host: str = Field(..., min_length=1)
    port: int = Field(21, ge=1, le=65535)
    username: str = "anonymous"
    password: str = ""
    directory: str = "/"
    tls: bool = False
    verify: bool = True  # FTPS: check the server's certificate (false: accept any)
    ca_file: str | None = None  # refused (a validation error): the CA bundle is FTPS_CA_FILE, a setting
    timeout: float = Field(30.0, gt=0, le=600)

    @field_validator("directory")
    @classmethod
    def _directory(cls, value: str) -> str:
        if any(part == ".." for part in value.split("/")) or "\\" in value or any(c in value for c in "\r\n\0"):
            raise ValueError("must be a plain path without '..'")
        return value


class GcsTarget(Model):
    """Google Cloud Storage (engine/deliver/gcs.py): `credentials_file` (a service-account JSON
    file) or `credentials` (the JSON itself, from a `${NAME}` secret), or neither (an emulator
    at `endpoint_url`: anonymous; else the ambient Google credentials, where allowed)."""

    type: Literal["gcs"]
    url: str
    endpoint_url: HttpUrlOrRef | None = None
    credentials_file: str | None = Field(None, min_length=1)
    credentials: str | None = Field(None, min_length=1)

    @field_validator("url")
    @classmethod
    def _gcs_url(cls, value: str) -> str:
        if not re.fullmatch(r"gs://[a-z0-9][a-z0-9._\-]{1,220}[a-z0-9](?:/[^\r\n\x00]*)?", value):
            raise ValueError("must be gs://bucket/prefix/ (a bucket: lower-case letters, digits, '-', '_', '.')")
        if any(part in (".", "..") for part in value[len("gs://") :].split("/")[1:]):
            raise ValueError("must not contain '.' or '..' path segments")
        return value

    @field_validator("credentials")
    @classmethod
    def _one_credential(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("credentials_file") is not None:
            raise ValueError("give credentials or credentials_file, not both")
        return value


class _TableTarget(Model):
    """A table target (engine/deliver/tables.py): one table per source (`{source}` in `table`)."""

    table: str = Field("{source}", min_length=1, max_length=200)
    mode: Literal["append", "replace", "merge"] = "append"
    key: tuple[str, ...] | None = Field(None, validate_default=True)
    schema_change: Literal["evolve", "freeze"] = "evolve"

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        if any(ord(c) < 32 or c == '"' for c in value):
            raise ValueError("must not contain control characters or '\"'")
        return value

    @field_validator("key")
    @classmethod
    def _key(cls, value: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...] | None:
        mode = info.data.get("mode")
        if value is not None and (not value or not all(isinstance(v, str) and v for v in value)):
            raise ValueError("must be a non-empty list of column names")
        if value is not None and len(set(value)) != len(value):
            raise ValueError("must not name a column twice")
        if mode == "merge" and value is None:
            raise ValueError("mode 'merge' needs key: a list of column names")
        if mode in ("append", "replace") and value is not None:
            raise ValueError("applies only with mode 'merge'")
        return value


class DuckdbTarget(_TableTarget):
    type: Literal["duckdb"]
    path: str = Field(..., min_length=1)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if any(ord(c) < 32 for c in value):
            raise ValueError("must not contain control characters")
        return value


class PostgresTarget(_TableTarget):
    type: Literal["postgres"]
    dsn: str = Field(..., min_length=1)  # a secret: `${NAME}`; masked like passwords
    schema_: str = Field("public", alias="schema", min_length=1, max_length=63)
    timeout: float = Field(30.0, gt=0, le=600)  # seconds to connect

    @field_validator("schema_")
    @classmethod
    def _schema_name(cls, value: str) -> str:
        if any(ord(c) < 32 or c == '"' for c in value):
            raise ValueError("must not contain control characters or '\"'")
        return value


TABLE_TARGET_TYPES = ("duckdb", "postgres")

DeliveryTarget = Annotated[
    S3Target | FtpTarget | GcsTarget | DuckdbTarget | PostgresTarget, Field(discriminator="type")
]


class JobSpec(Model):
    name: str = "export"
    sources: tuple[Source, ...]
    rate_limit: Annotated[RateLimit | None, BeforeValidator(_rate_limit)] = None
    concurrency: int | None = Field(None, ge=1, le=256)
    retry: Retry = Retry()
    timeout: float = Field(30.0, gt=0, le=3600)
    on_error: Literal["fail", "skip"] = "fail"
    columns: tuple[Column, ...] | None = None
    filters: tuple[Filter, ...] = ()
    group_by: GroupBy | None = None
    sort: tuple[SortKey, ...] = ()
    distinct: Annotated[bool | tuple[str, ...], BeforeValidator(_distinct)] = False
    limit: int | None = Field(None, ge=0)
    export: Export = Export()
    webhook: Webhook | None = None
    deliver: tuple[DeliveryTarget, ...] = ()

    @field_validator("sources")
    @classmethod
    def _some_sources(cls, value: tuple) -> tuple:
        if not 1 <= len(value) <= 100:
            raise ValueError("must hold 1 to 100 sources")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.fullmatch(value) or ".." in value:
            raise ValueError("must be 1-100 letters, digits, spaces, '_', '-' or '.', starting with a letter or digit")
        return value

    @model_validator(mode="before")
    @classmethod
    def _name_sources(cls, data: Any) -> Any:
        """Unnamed sources take the job's name (one source) or `source_N` (several)."""
        if not isinstance(data, dict) or not isinstance(data.get("sources"), list):
            return data
        sources = data["sources"]
        job_name = data.get("name") if isinstance(data.get("name"), str) else "export"
        named = []
        for i, source in enumerate(sources):
            if isinstance(source, dict) and source.get("name") is None:
                source = {**source, "name": job_name if len(sources) == 1 else f"source_{i + 1}"}
            named.append(source)
        return {**data, "sources": named}

    @property
    def filename(self) -> str:
        return self.export.filename or self.name

    @property
    def output_name(self) -> str:
        return f"{self.filename}.{self.export.format}"


def _body_has_id(source: Source) -> bool:
    """An `{id}` in a string of the body (a GraphQL source: of its variables, not the query)."""

    def has(node: Any) -> bool:
        if isinstance(node, str):
            return "{id}" in node
        if isinstance(node, dict):
            return any(has(v) for v in node.values())
        return isinstance(node, list) and any(has(v) for v in node)

    return has(source.graphql.variables if source.graphql is not None else source.body)


def _source_coherent(i: int, source: Source, out: list[FieldError]) -> None:
    at = f"sources.{i}"
    pagination = source.pagination
    body_paths = [
        n for n in ("total_pages", "total_records") if getattr(pagination, n) and not pagination.from_header(n)
    ]
    if source.format != "json":
        if source.pagination.type in ("cursor", "next_url"):
            out.append(
                FieldError(
                    f"{at}.pagination.type",
                    f"{source.pagination.type!r} reads the next page "
                    f"from a JSON body; it needs format 'json', not {source.format!r}",
                )
            )
        if body_paths:
            out.append(
                FieldError(
                    f"{at}.pagination.{body_paths[0]}",
                    f"reads a JSON body; it needs format 'json', not {source.format!r}",
                )
            )
        if source.records:
            out.append(FieldError(f"{at}.records", "applies only to format 'json'"))
        if pagination.has_more:
            out.append(FieldError(f"{at}.pagination.has_more", "reads a JSON body; it needs format 'json'"))
        if source.graphql is not None:
            out.append(FieldError(f"{at}.format", "a GraphQL source answers JSON: format must be 'json'"))
        if source.incremental is not None:
            out.append(FieldError(f"{at}.incremental.cursor", "reads JSON records; it needs format 'json'"))
    if "{id}" in source.url and source.ids is None:
        out.append(FieldError(f"{at}.url", "has an {id} placeholder but the source has no ids fan-out"))
    if source.ids is not None and source.ids.param is None and "{id}" not in source.url and not _body_has_id(source):
        out.append(FieldError(f"{at}.ids.param", "needed when neither url nor body has an {id} placeholder"))
    if source.method == "GET" and source.body is not None:
        out.append(FieldError(f"{at}.body", "a body needs method POST"))
    if source.body is not None and not isinstance(source.body, dict):
        out.append(FieldError(f"{at}.body", "must be a JSON object"))
    if source.graphql is not None:
        if source.body is not None:
            out.append(FieldError(f"{at}.body", "give body or graphql, not both (graphql builds the body)"))
        if "method" in source.model_fields_set and source.method != "POST":
            out.append(FieldError(f"{at}.method", "a GraphQL source is a POST"))
        if pagination.in_ == "query":
            out.append(FieldError(f"{at}.pagination.in", "a GraphQL source pages through its variables (in: body)"))
    if source.in_body:
        if not source.sends_body:
            out.append(FieldError(f"{at}.pagination.in", "'body' needs a body (or graphql) to put the parameter in"))
        for name in ("param", "size_param"):
            path = getattr(pagination, name)
            if name == "size_param" and pagination.size is None:
                continue  # sent only with a size: a type's default (`per_page`) is not the user's
            if path is not None and source.graphql is not None and not path.startswith("variables."):
                out.append(FieldError(f"{at}.pagination.{name}", "a GraphQL variable: variables.<name>"))
    if pagination.type == "cursor" and pagination.size is not None and pagination.size_param is None:
        out.append(FieldError(f"{at}.pagination.size_param", "needed with size: the parameter that carries it"))
    if source.incremental is not None:
        param = source.incremental.param
        if source.graphql is not None and not (
            param.lower().startswith(HEADER_PREFIX) or param.startswith(("variables.", "query:"))
        ):
            out.append(FieldError(f"{at}.incremental.param", "a GraphQL variable: variables.<name>"))
    for name in source.headers:
        if name.strip().lower() in FRAMING_HEADERS:
            out.append(FieldError(f"{at}.headers.{name}", "is set by the HTTP client; a spec cannot set it"))


def _source_names_ok(spec: JobSpec, out: list[FieldError]) -> None:
    seen: set[str] = set()
    for i, source in enumerate(spec.sources):
        if not NAME_PATTERN.fullmatch(source.name) or ".." in source.name:
            out.append(
                FieldError(
                    f"sources.{i}.name",
                    "must be 1-100 letters, digits, spaces, '_', '-' or '.', starting with a letter or digit",
                )
            )
        elif source.name.lower() in seen:
            out.append(FieldError(f"sources.{i}.name", f"duplicate source name {source.name!r}"))
        seen.add(source.name.lower())


def _targets_coherent(spec: JobSpec, out: list[FieldError]) -> None:
    """Checks across a delivery target's fields, reported at the field to change."""
    for i, target in enumerate(spec.deliver):
        at = f"deliver.{i}"
        if isinstance(target, S3Target) and (target.access_key is None) != (target.secret_key is None):
            missing = "secret_key" if target.secret_key is None else "access_key"
            out.append(
                FieldError(
                    f"{at}.{missing}",
                    "give both access_key and secret_key, or neither (then the AWS environment is used)",
                )
            )
        if isinstance(target, FtpTarget) and target.ca_file is not None:
            out.append(
                FieldError(
                    f"{at}.ca_file",
                    "is not a spec field: the CA bundle for FTPS is the FTPS_CA_FILE setting (the operator's)",
                )
            )
        if isinstance(target, FtpTarget) and not target.tls:
            if "verify" in target.model_fields_set and target.verify is not FtpTarget.model_fields["verify"].default:
                out.append(FieldError(f"{at}.verify", "applies only with tls: true"))


def _export_fits_sources(spec: JobSpec, out: list[FieldError]) -> None:
    exported = [s for s in spec.sources if s.export]
    if not exported:
        out.append(FieldError("sources", 'every source has "export": false; at least one must be exported'))
    if len(exported) > 1 and spec.export.format not in ("zip", "xlsx"):
        out.append(
            FieldError(
                "export.format",
                f"{len(exported)} sources need format 'zip' or "
                f"'xlsx' (one file or sheet per source), not {spec.export.format!r}",
            )
        )


def _dependencies_ok(spec: JobSpec, out: list[FieldError]) -> None:
    """`ids.from` names another source; following parents never comes back to a source."""
    by_name = {s.name: s for s in spec.sources}
    for i, source in enumerate(spec.sources):
        parent = source.parent
        if parent is None:
            continue
        if parent not in by_name:
            known = ", ".join(repr(s.name) for s in spec.sources if s.name != source.name)[:200] or "none"
            out.append(FieldError(f"sources.{i}.ids.from", f"no source named {parent!r} (sources: {known})"))
            continue
        seen = [source.name]
        node: str | None = parent
        while node is not None and node in by_name:
            if node in seen:
                chain = " -> ".join([*seen, node])
                out.append(FieldError(f"sources.{i}.ids.from", f"sources depend on each other in a cycle ({chain})"))
                break
            seen.append(node)
            node = by_name[node].parent


def _incremental_named(spec: JobSpec, out: list[FieldError]) -> None:
    if any(s.incremental is not None for s in spec.sources) and "name" not in spec.model_fields_set:
        out.append(FieldError("name", "required with incremental: the saved state is kept by job name"))


def dependency_order(spec: JobSpec) -> list[list[int]]:
    """Source indexes in waves: each wave's parents are all in earlier waves."""
    index = {s.name: i for i, s in enumerate(spec.sources)}
    level: dict[int, int] = {}

    def depth(i: int) -> int:
        if i not in level:
            parent = spec.sources[i].parent
            level[i] = 0 if parent is None else depth(index[parent]) + 1
        return level[i]

    waves: dict[int, list[int]] = {}
    for i in range(len(spec.sources)):
        waves.setdefault(depth(i), []).append(i)
    return [waves[k] for k in sorted(waves)]


def _loc_to_path(loc: tuple) -> str:
    """pydantic's error location → dotted field path, without union tags."""
    parts: list[str] = []
    for i, item in enumerate(loc):
        previous = loc[i - 1] if i else None
        if isinstance(item, str) and previous in ("auth",) and item in ("bearer", "header", "query", "basic", "oauth2"):
            continue
        if (
            isinstance(item, str)
            and isinstance(previous, int)
            and len(parts) >= 2
            and parts[-2] == "deliver"
            and item in ("s3", "ftp", "gcs", "duckdb", "postgres")
        ):
            continue
        if isinstance(item, str) and item.startswith("function-"):
            continue
        parts.append("as" if item == "as_" else str(item))
    return ".".join(parts) or "spec"


def _clean_message(err: ErrorDetails) -> str:
    msg = err.get("msg", "invalid")
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if err.get("type") == "extra_forbidden":
        return "unknown field"
    if err.get("type") == "missing":
        return "field required"
    return msg


def parse_spec(data: Any) -> JobSpec:
    """Validate a decoded JSON document into a `JobSpec`, or raise `SpecError`."""
    if not isinstance(data, dict):
        raise SpecError([FieldError("spec", "must be a JSON object")])
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        details = []
        seen = set()
        for err in exc.errors(include_url=False):
            item = FieldError(_loc_to_path(tuple(err.get("loc", ()))), _clean_message(err))
            if (item.field, item.message) not in seen:
                seen.add((item.field, item.message))
                details.append(item)
        raise SpecError(details) from None
    problems: list[FieldError] = []
    _source_names_ok(spec, problems)
    for i, source in enumerate(spec.sources):
        _source_coherent(i, source, problems)
    _export_fits_sources(spec, problems)
    _dependencies_ok(spec, problems)
    _incremental_named(spec, problems)
    _targets_coherent(spec, problems)
    from engine.spec.shaping_rules import check as shaping_problems

    problems.extend(shaping_problems(spec))
    if problems:
        raise SpecError(problems)
    return spec


def spec_to_json(spec: JobSpec) -> dict:
    """The normalised spec as JSON-able data (unresolved `${NAME}` references kept)."""
    return spec.model_dump(mode="json", by_alias=True)
