"""engine/__main__.py: which runs start the forkserver before the CLI is even imported."""

from __future__ import annotations

import pytest

from engine.__main__ import _one_process


@pytest.mark.parametrize(
    ("argv", "env", "one"),
    [
        (["spec.json", "--workers", "1"], {}, True),
        (["spec.json", "--workers=1"], {}, True),
        (["spec.json"], {"WORKERS": "1"}, True),
        (["spec.json", "--workers", "2"], {"WORKERS": "1"}, False),  # the option wins
        (["spec.json", "--workers", "1", "--workers", "3"], {}, False),  # the last one counts
        (["spec.json"], {"WORKERS": "4"}, False),
        (["spec.json"], {}, False),
        (["spec.json", "--workers"], {}, False),  # argparse's error, not ours
    ],
)
def test_one_process_runs_start_no_forkserver(argv, env, one, monkeypatch):
    monkeypatch.delenv("WORKERS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _one_process(argv) is one
