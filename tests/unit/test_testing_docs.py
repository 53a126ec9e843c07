"""docs/testing-plugins.md's examples run as written: every code block that starts with
`# file: NAME` is written out, and pytest runs them in a subprocess on tote's pytest plugin
(loaded through its pytest11 entry point, as in a plugin author's project)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing-plugins.md"
BLOCK = re.compile(r"```python\n# file: (\S+)\n(.*?)```", re.DOTALL)


def test_the_examples_pass(tmp_path: Path) -> None:
    blocks = BLOCK.findall(DOC.read_text())
    assert [name for name, _ in blocks] == [
        "tote_ledger.py", "test_ledger.py", "tote_rack.py", "test_rack.py"]
    for name, body in blocks:
        (tmp_path / name).write_text(body)
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options]\ntrio_mode = true\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOTE_", "PYTEST_"))}
    env["PYTHONPATH"] = str(tmp_path)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "6 passed" in run.stdout, run.stdout
