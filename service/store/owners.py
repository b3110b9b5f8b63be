"""Who holds a claim: an owner string names one runner (`host:pid:random:instance`), so a
store can tell whether its process is still alive (on this host) and which instance it
belongs to (the per-instance MAX_CONCURRENT_TASKS on a shared PostgreSQL store)."""

from __future__ import annotations

import os
import socket
import uuid

HOST = socket.gethostname()


def new_owner() -> str:
    """A runner's owner string. The instance is the parent process: a gunicorn worker's
    master, so every worker of one `gunicorn` command counts as one instance."""
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:6]}:{os.getppid()}"


def instance_of(owner: str) -> str:
    """`host:parent pid` of an owner; an owner without an instance part is its own instance."""
    parts = owner.split(":")
    return f"{parts[0]}:{parts[3]}" if len(parts) == 4 else owner


def owner_alive(owner: str | None) -> bool:
    """Is the process named by an owner string still running (when it is on this host)?"""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    if host != HOST:
        return True  # another machine: only its lease can tell
    try:
        os.kill(int(rest.split(":")[0]), 0)
        return True
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
