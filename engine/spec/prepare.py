"""Checks that need the running environment, done before anything is fetched: `${NAME}`
references resolved, `ids.file` read, source hosts checked against ALLOWED_SOURCE_HOSTS, the
fan-out's size bounded. The CLI's `validate` and `run` and the service's `start` all call
`prepare` (after `parse_spec`), so they reject exactly the same specs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from engine.errors import FieldError, SpecError
from engine.fetch.outbound import host_allowed
from engine.plan.fanout import MAX_UNITS, FanOut, parse_id_csv, read_id_file
from engine.spec.models import ENV_REF, JobSpec
from engine.spec.redact import Redactor, resolve


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
    allowed_hosts: tuple[str, ...] = (),
    base_dir: Path | None = None,
    id_files: Mapping[int, bytes] | None = None,
    read_id_files: bool = True,
) -> PreparedJob:
    """`id_files`: uploaded ids files by source index (the service's multipart upload).
    `read_id_files=False` (the service): `ids.file` is never read from disk; a source without
    its upload is a field error at `sources.N.ids.file`."""
    resolved, redactor = resolve(spec, env)
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
    fanouts = [FanOut(source, id_values[i]) for i, source in enumerate(resolved.sources)]
    units = sum(f.count for f in fanouts)
    if units > MAX_UNITS:
        problems.append(FieldError("sources", f"the fan-out makes {units} units; at most {MAX_UNITS} per job"))
    for i, (source, fanout) in enumerate(zip(resolved.sources, fanouts)):
        problems.extend(fanout.check_urls(i))
        if allowed_hosts:
            _check_hosts(i, source, fanout, allowed_hosts, problems)
    if problems:
        raise SpecError([FieldError(p.field, redactor.text(p.message)) for p in problems])
    return PreparedJob(spec, resolved, redactor, id_values, fanouts)


def _check_hosts(i: int, source, fanout: FanOut, allowed: tuple[str, ...], problems: list[FieldError]) -> None:
    urls = []
    if source.url.strip() == "{id}":
        urls = [str(fanout.unit(u).id) for u in range(fanout.count)]
    elif not ENV_REF.search(source.url):
        urls = [source.url.replace("{id}", "x").replace("{start}", "x").replace("{end}", "x")]
    for url in urls:
        if not host_allowed(url, allowed):
            problems.append(
                FieldError(f"sources.{i}.url", f"host {urlsplit(url).hostname!r} is not in ALLOWED_SOURCE_HOSTS")
            )
            return
    if source.auth is not None and source.auth.type == "oauth2" and not host_allowed(source.auth.token_url, allowed):
        problems.append(
            FieldError(
                f"sources.{i}.auth.token_url",
                f"host {urlsplit(source.auth.token_url).hostname!r} is not in ALLOWED_SOURCE_HOSTS",
            )
        )
