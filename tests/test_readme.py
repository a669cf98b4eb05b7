"""The README documents what a newcomer needs: every flag of app.py, where outputs go, the CPU-torch install."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_readme_lists_every_flag_of_app_py():
    import app

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        app.parse_args(["--help"])
    flags = set(re.findall(r"(--[a-z][a-z0-9-]+)", out.getvalue())) - {"--help"}
    assert len(flags) >= 10
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("Every flag of `python app.py`"):]
    missing = sorted(f for f in flags if f"`{f}" not in table)
    assert not missing, f"README's flag table misses {missing}"


def test_readme_says_where_outputs_go_and_how_to_get_cpu_torch():
    readme = (ROOT / "README.md").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme
    assert "outputs/<user>/<job id>/" in readme and "jobs.sqlite3" in readme
    assert "demo IC-LoRAs" in readme
