"""`${NAME}` references and redaction. Specs are stored and shown with their references; only
the process that runs a job resolves them (`resolve`). Whatever may carry a secret - the spec,
URLs, error text - goes through a `Redactor` first: secret fields keep their shape but read `"***"`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

from engine.errors import FieldError, SpecError
from engine.spec.models import ENV_REF, JobSpec, parse_spec, spec_to_json

MASK = "***"
SECRET_FIELDS = {"token", "password", "client_secret", "secret", "secret_key", "access_key", "credentials", "dsn"}
SENSITIVE_NAME = re.compile(
    r"(auth|token|secret|passw|api[-_]?key|apikey|signature|session|cookie|credential)", re.IGNORECASE
)
MIN_SCRUB_LENGTH = 4  # shorter "secrets" would shred every message they appear in


def _is_secret_path(path: tuple) -> bool:
    """Field paths whose values are secrets, e.g. ('sources', 0, 'auth', 'token')."""
    if not path:
        return False
    last = path[-1]
    if "auth" in path and last in ("token", "value", "password", "client_secret"):
        return True
    if path[0] == "webhook" and last == "secret":
        return True
    if path[0] == "deliver" and last in ("secret_key", "password", "access_key", "credentials", "dsn"):
        return True
    if len(path) >= 2 and path[-2] in ("headers", "params") and isinstance(last, str) and SENSITIVE_NAME.search(last):
        return True
    return False


def _walk(node: Any, path: tuple = ()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, path + (i,))
    else:
        yield path, node


def _replace(node: Any, fn, path: tuple = ()) -> Any:
    if isinstance(node, dict):
        return {k: _replace(v, fn, path + (k,)) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace(v, fn, path + (i,)) for i, v in enumerate(node)]
    return fn(path, node)


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


class Redactor:
    """Removes the job's secrets from anything about to be shown, logged or stored."""

    def __init__(self, secrets: set[str] | frozenset[str] = frozenset()):
        self._compile(frozenset(s for s in secrets if isinstance(s, str) and len(s) >= MIN_SCRUB_LENGTH))

    def add(self, secret: str) -> None:
        """Mask `secret` too from now on: a credential obtained at run time (an OAuth2 access
        token), in the process that obtained it."""
        if isinstance(secret, str) and len(secret) >= MIN_SCRUB_LENGTH and secret not in self.secrets:
            self._compile(self.secrets | {secret})

    def _compile(self, secrets: frozenset[str]) -> None:
        self.secrets = secrets
        # A secret inside a URL is percent-encoded (a query-param key with '/', '+' or '='):
        # those forms are masked too.
        forms = set(self.secrets)
        for s in self.secrets:
            forms.update((quote(s, safe=""), quote(s), quote_plus(s)))
        # Longest first, so a secret containing another is masked whole.
        self._pattern = (
            re.compile("|".join(re.escape(s) for s in sorted(forms, key=len, reverse=True))) if forms else None
        )

    def text(self, value: str) -> str:
        if self._pattern is not None and value:
            value = self._pattern.sub(MASK, value)
        return value

    def url(self, url: str) -> str:
        """Mask secret values and the values of sensitive query parameters (query-param auth)."""
        try:
            parts = urlsplit(url)
            if parts.query:
                query = [
                    (k, MASK if SENSITIVE_NAME.search(k) else self.text(v))
                    for k, v in parse_qsl(parts.query, keep_blank_values=True)
                ]
                parts = parts._replace(query=urlencode(query, safe="*"))
            if parts.password:
                parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", f":{MASK}@"))
            url = urlunsplit(parts)
        except ValueError:
            pass
        return self.text(url)

    def spec(self, spec_json: dict) -> dict:
        """The spec with every secret field masked, shape kept: {"type": "bearer", "token": "***"}."""

        def mask(path: tuple, value: Any) -> Any:
            if _is_secret_path(path) and value not in (None, ""):
                return MASK
            if isinstance(value, str):
                return self.url(value) if value.startswith(("http://", "https://")) else self.text(value)
            return value

        return _replace(spec_json, mask)

    def data(self, value: Any) -> Any:
        """Scrub every string inside a JSON-able value (status, manifests, error lists)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.data(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.data(v) for v in value]
        return value


def env_references(spec: JobSpec) -> set[str]:
    names: set[str] = set()
    for _, value in _walk(spec_to_json(spec)):
        if isinstance(value, str):
            names.update(ENV_REF.findall(value))
    return names


def _name_matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)


@dataclass(frozen=True)
class SecretNames:
    """Which `${NAME}` a spec may use (the service's SECRET_NAMES): names and `PREFIX*`
    patterns in `allowed`; `forbidden` (names and patterns: the service's own settings) never,
    even when `allowed` matches them."""

    allowed: tuple[str, ...] = ("PAGEFERRY_SECRET_*",)
    forbidden: tuple[str, ...] = ()

    def permits(self, name: str) -> bool:
        return _name_matches(name, self.allowed) and not _name_matches(name, self.forbidden)


# The service's own settings and credentials: never a job's `${NAME}`, whatever SECRET_NAMES
# says (besides every name config/settings.py reads, see `service_secret_names`).
SERVICE_OWN_ENV = (
    "API_TOKEN",
    "DATABASE_URL",
    "REDIS_URL",
    "RESULT_STORE*",
    "EXECUTOR",
    "AWS_*",
    "GOOGLE_*",
    "AZURE_*",
    "SECRET_NAMES",
    "ALLOW_*",
    "FTPS_CA_FILE",
    "GUNICORN_*",
    "PAGEFERRY_SIGNING*",
)


class _Recorder(dict):
    """An empty environment that remembers every name looked up in it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def get(self, key, default=None):
        self.seen.add(key)
        return default

    def __contains__(self, key) -> bool:
        self.seen.add(key)
        return False


def settings_env_names() -> tuple[str, ...]:
    """Every environment variable `config.load_settings` reads."""
    from config import load_settings

    recorder = _Recorder()
    try:
        load_settings(recorder)
    except Exception:  # noqa: BLE001 - a setting that needs a value: the names seen so far still count
        pass
    return tuple(sorted(recorder.seen))


def service_secret_names(settings) -> SecretNames:
    """The service's rule: SECRET_NAMES, minus the service's own settings, always."""
    return SecretNames(tuple(settings.secret_names), SERVICE_OWN_ENV + settings_env_names())


def resolve(spec: JobSpec, env: Mapping[str, str], names: SecretNames | None = None) -> tuple[JobSpec, Redactor]:
    """Substitute `${NAME}` from `env`. A missing variable is a SpecError naming field and
    variable. `names` (the service): only the names it permits resolve, any other is a
    SpecError naming the field; None (the CLI): any name of its own environment."""
    problems: list[FieldError] = []
    secrets: set[str] = set()

    def substitute(path: tuple, value: Any) -> Any:
        if not isinstance(value, str):
            if _is_secret_path(path) and value is not None:
                secrets.add(str(value))
            return value

        def one(match: re.Match) -> str:
            name = match.group(1)
            if names is not None and not names.permits(name):
                problems.append(FieldError(_dotted(path), f"${{{name}}} is not an allowed secret name (SECRET_NAMES)"))
                return ""
            if name not in env:
                problems.append(FieldError(_dotted(path), f"environment variable {name} is not set"))
                return ""
            return env[name]

        resolved = ENV_REF.sub(one, value)
        if _is_secret_path(path):
            secrets.add(resolved)
        if resolved != value:
            # Values kept in the environment are treated as secrets wherever they are used
            # (a token in a URL path, say): masked in every message, not just in auth fields.
            secrets.update(
                env[name] for name in ENV_REF.findall(value) if name in env and (names is None or names.permits(name))
            )
        return resolved

    resolved_json = _replace(spec_to_json(spec), substitute)
    if problems:
        raise SpecError(problems)
    resolved_spec = parse_spec(resolved_json)
    for source in resolved_spec.sources:
        if source.auth is not None and source.auth.type == "basic":
            # Basic credentials travel base64-encoded in a header: mask that form too.
            raw = f"{source.auth.username}:{source.auth.password}".encode()
            secrets.add(base64.b64encode(raw).decode())
    return resolved_spec, Redactor(secrets)
