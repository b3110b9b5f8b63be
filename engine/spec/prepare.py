"""Checks that need the running environment, done before anything is fetched: `${NAME}`
references resolved (in the service: only names SECRET_NAMES permits), `ids.file` read, every
URL and host the spec names checked with the outbound policy (engine/fetch/outbound.py), the
fan-out's size bounded. The CLI's `validate` and `run` and the service's `start` all call
`prepare` (after `parse_spec`), so they reject exactly the same specs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from engine.errors import FieldError, SpecError
from engine.fetch.outbound import OutboundPolicy, host_problem, url_problem
from engine.plan.fanout import MAX_UNITS, FanOut, parse_id_csv, read_id_file
from engine.spec.models import JobSpec
from engine.spec.redact import Redactor, SecretNames, resolve

_AUTHORITY = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


@dataclass
class PreparedJob:
    spec: JobSpec  # as written: `${NAME}` references kept (stored, shown)
    resolved: JobSpec  # secrets substituted (handed to the pool processes only)
    redactor: Redactor
    id_values: list  # per source: values read from ids.file, else None
    fanouts: list[FanOut]


def prepare(
    spec: JobSpec,
    env: Mapping[str, str],
    policy: OutboundPolicy | tuple[str, ...] | None = None,
    base_dir: Path | None = None,
    id_files: Mapping[int, bytes] | None = None,
    read_id_files: bool = True,
    secret_names: SecretNames | None = None,
    duckdb_dir: Path | None = None,
) -> PreparedJob:
    """`policy`: where the job may connect (`outbound_policy(settings, service)`; a tuple is
    taken as ALLOWED_SOURCE_HOSTS entries). Every URL and host the spec names is checked with
    it: source URLs (each whole-URL id too), OAuth2 token URLs, the webhook, S3 endpoints, FTP
    hosts; what a run finds (redirects, next URLs) is checked as it is followed.
    `id_files`: uploaded ids files by source index (the service's multipart upload).
    `read_id_files=False` (the service): `ids.file` is never read from disk; a source without
    its upload is a field error at `sources.N.ids.file`. `secret_names` (the service): which
    `${NAME}` may resolve; None: any name of `env`. `duckdb_dir` (the service): a `duckdb`
    target's `path` must be a plain file name, kept in that folder - a client never names a
    file on the server."""
    if not isinstance(policy, OutboundPolicy):
        policy = OutboundPolicy(tuple(policy or ()))
    resolved, redactor = resolve(spec, env, secret_names)
    problems: list[FieldError] = []
    id_values: list = []
    for i, source in enumerate(resolved.sources):
        values = None
        if source.ids is not None and source.ids.file is not None:
            field = f"sources.{i}.ids.file"
            try:
                if id_files and i in id_files:
                    values = parse_id_csv(id_files[i], source.ids.column, field)
                elif not read_id_files:
                    raise SpecError([FieldError(field, "the uploaded ids file is missing")])
                else:
                    path = Path(source.ids.file)
                    if not path.is_absolute() and base_dir is not None:
                        path = base_dir / path
                    values = read_id_file(path, source.ids.column, field)
            except SpecError as exc:
                problems.extend(exc.details)
        id_values.append(values)
    if problems:
        raise SpecError(problems)
    # A source fed by another's records (`ids.from`) gets its units when that one is fetched:
    # its values are checked then (check_child), every connection by the outbound guard anyway.
    fanouts = [FanOut(source, id_values[i]) for i, source in enumerate(resolved.sources)]
    units = sum(f.count for f in fanouts)
    if units > MAX_UNITS:
        problems.append(FieldError("sources", f"the fan-out makes {units} units; at most {MAX_UNITS} per job"))
    for i, (source, fanout) in enumerate(zip(resolved.sources, fanouts)):
        if source.ids is not None and source.ids.batch > 1 and source.url.strip() == "{id}":
            problems.append(
                FieldError(f"sources.{i}.ids.batch", 'a whole-URL fan-out ("url": "{id}") takes one URL per request')
            )
            continue
        problems.extend(check_child(i, source, fanout, policy))
    _check_targets(resolved, policy, problems)
    if duckdb_dir is not None:
        resolved = _keep_duckdb_in(resolved, duckdb_dir, problems)  # the stored spec keeps the name
    if problems:
        raise SpecError([FieldError(p.field, redactor.text(p.message)) for p in problems])
    return PreparedJob(spec, resolved, redactor, id_values, fanouts)


def check_child(i: int, source, fanout: FanOut, policy: OutboundPolicy) -> list[FieldError]:
    """A source's fan-out values and URLs checked: before the run, or, for a source whose ids
    come from another source's records, once those are read."""
    problems: list[FieldError] = []
    not_urls = fanout.check_urls(i)
    problems.extend(not_urls)
    _check_source(i, source, fanout, policy, problems, check_url=not not_urls)
    return problems


def _check_source(
    i: int, source, fanout: FanOut, policy: OutboundPolicy, problems: list[FieldError], check_url: bool = True
) -> None:
    if not check_url:  # listed values that are not URLs at all: named already
        urls = []
    elif source.url.strip() == "{id}":
        urls = [str(fanout.unit(u).id) for u in range(fanout.count)]
    else:
        urls = [source.url.replace("{id}", "x").replace("{start}", "x").replace("{end}", "x")]
    passed: set[str] = set()  # scheme and authority of URLs already checked (a long id list: few hosts)
    for url in urls:
        key = _AUTHORITY.match(url)
        if key is not None and key.group(0) in passed and "\\" not in url:
            continue
        problem = url_problem(url, policy)
        if problem:
            problems.append(FieldError(f"sources.{i}.url", problem))
            break
        if key is not None:
            passed.add(key.group(0))
    if source.auth is not None and source.auth.type == "oauth2":
        problem = url_problem(source.auth.token_url, policy)
        if problem:
            problems.append(FieldError(f"sources.{i}.auth.token_url", problem))


def _check_targets(spec: JobSpec, policy: OutboundPolicy, problems: list[FieldError]) -> None:
    if spec.webhook is not None:
        problem = url_problem(spec.webhook.url, policy)
        if problem:
            problems.append(FieldError("webhook.url", problem))
    for i, target in enumerate(spec.deliver):
        host = getattr(target, "host", None)  # FTP (and any target that names a host)
        if isinstance(host, str):
            problem = host_problem(host, policy)
            if problem:
                problems.append(FieldError(f"deliver.{i}.host", problem))
        dsn = getattr(target, "dsn", None)  # PostgreSQL
        if isinstance(dsn, str):
            for host in dsn_hosts(dsn):
                problem = host_problem(host, policy)
                if problem:
                    problems.append(FieldError(f"deliver.{i}.dsn", problem))
                    break
        endpoint = getattr(target, "endpoint_url", None)  # S3, GCS
        if isinstance(endpoint, str):
            problem = url_problem(endpoint, policy)
            if problem:
                problems.append(FieldError(f"deliver.{i}.endpoint_url", problem))


_DSN_HOST = re.compile(r"(?:^|\s)host\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def dsn_hosts(dsn: str) -> list[str]:
    """The host names a libpq DSN connects to (URL or `key=value` form; a list is comma
    separated), without importing a driver. Checked again, by address, when connecting."""
    if "://" in dsn:
        netloc = urlsplit(dsn).netloc.rpartition("@")[2]
        raw = [part.rsplit(":", 1)[0] if not part.endswith("]") else part for part in netloc.split(",")]
        return [unquote(h).strip("[]") for h in raw if h]
    found = _DSN_HOST.search(dsn)
    return [h for h in found.group(1).strip("'").split(",") if h] if found else []


def _keep_duckdb_in(spec: JobSpec, folder: Path, problems: list[FieldError]) -> JobSpec:
    targets = list(spec.deliver)
    for i, target in enumerate(targets):
        if getattr(target, "type", None) != "duckdb":
            continue
        name = target.path  # type: ignore[union-attr]  # a DuckdbTarget
        if "/" in name or "\\" in name or name.startswith("."):
            problems.append(
                FieldError(
                    f"deliver.{i}.path", "must be a file name: the service keeps DuckDB files in its own data folder"
                )
            )
            continue
        targets[i] = target.model_copy(update={"path": str(folder / name)})
    return spec.model_copy(update={"deliver": targets})
