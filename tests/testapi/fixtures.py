"""pytest fixtures for the local test API.

Enable with ``pytest_plugins = ["tests.testapi.fixtures"]`` (in the root conftest).

- ``test_api`` (session): one started :class:`TestAPI` for the whole run; never reset
  automatically.
- ``api`` (function): the same server, after ``reset()`` (empty log, fresh fault
  attempt counters and OAuth state).
"""

from __future__ import annotations

import pytest

from .client import TestAPI


@pytest.fixture(scope="session", name="test_api")
def _test_api_fixture():
    with TestAPI() as server:
        yield server


@pytest.fixture(name="api")
def _api_fixture(test_api):
    if not test_api.running:
        raise RuntimeError(f"the test API server died; stderr:\n{test_api.stderr_text()}")
    test_api.reset()
    yield test_api
