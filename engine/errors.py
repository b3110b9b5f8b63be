"""Errors the engine raises to its callers (CLI, service). Messages never carry secrets."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def as_dict(self) -> dict:
        return {"field": self.field, "message": self.message}


class SpecError(ValueError):
    """The job spec is invalid. `details` names every offending field by its dotted path."""

    def __init__(self, details: list[FieldError]):
        self.details = details
        first = details[0] if details else FieldError("spec", "invalid")
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        super().__init__(f"{first.field}: {first.message}{more}")


@dataclass
class PageFailure:
    """One page that exhausted its retries (or failed for a reason retrying cannot help)."""

    url: str
    status: int | None
    error: str
    source: str = ""

    def as_dict(self) -> dict:
        return {"url": self.url, "status": self.status, "error": self.error}


class JobFailed(RuntimeError):
    """The job could not deliver a complete result; `pages` lists the pages that failed."""

    def __init__(self, message: str, pages: list[PageFailure] | None = None):
        super().__init__(message)
        self.message = message
        self.pages = pages or []

    def as_dict(self) -> dict:
        return {"message": self.message, "pages": [p.as_dict() for p in self.pages]}


class ShapingError(RuntimeError):
    """The fetched data does not fit the spec's shaping: a column that is not in the data, a
    value that does not cast to its column's `type`, an op or aggregation the column's type
    cannot take. Raised in the export process; the job fails with this message."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class JobCancelled(RuntimeError):
    """The job was cancelled (Ctrl-C, a cancel request, a timeout handled by the caller)."""


@dataclass
class Problems:
    """Collects field errors while validating, so one pass reports all of them."""

    items: list[FieldError] = field(default_factory=list)

    def add(self, path: str, message: str) -> None:
        self.items.append(FieldError(path, message))

    def raise_if_any(self) -> None:
        if self.items:
            raise SpecError(self.items)
