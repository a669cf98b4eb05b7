"""Job kinds live in studio.kinds, registered by the context whatever tabs are built."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_kind_is_registered_without_building_a_tab(tmp_path):
    code = (
        "import json, sys\n"
        "from studio.context import StudioConfig, build_context\n"
        f"ctx = build_context(StudioConfig(outputs_dir={str(tmp_path / 'out')!r}))\n"
        "k = ctx.jobs.kinds\n"
        "print(json.dumps({'kinds': {n: [s.lane.value, s.resumable] for n, s in k.items()},\n"
        "                  'tabs': [m for m in sys.modules if m.startswith('studio.tabs')]}))\n"
        "ctx.jobs.shutdown(timeout=5)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["kinds"]["generate"] == ["gpu", False]
    assert got["kinds"]["preprocess"] == ["light", False]
    assert got["kinds"]["train"] == ["gpu", True]
    assert got["tabs"] == [], "registering the job kinds must not import any tab"
