"""pageferry's local test API (see README.md in this directory).

- ``tests.testapi.server``  the aiohttp app (``python -m tests.testapi.server --port 0``)
- ``tests.testapi.client``  ``TestAPI``: start/stop the subprocess, ``url()``, ``log()``, ``reset()``
- ``tests.testapi.records`` deterministic records, to compute expected data independently
- ``tests.testapi.faults``  which requests get which injected fault (pure functions)
- ``tests.testapi.creds``   the fixed test credentials
- ``tests.testapi.fixtures`` pytest fixtures ``test_api`` (session) and ``api`` (reset per test)
"""
