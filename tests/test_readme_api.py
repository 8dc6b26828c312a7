"""The README's "Python API" example, read from README.md and run as written in a new
interpreter (so it needs no import the example does not make)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_python_block(heading: str) -> str:
    """The first ```python block of README section ``heading`` (a ``## `` line)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.find(f"\n{heading}\n")
    assert start >= 0, f"README.md has no section {heading!r}"
    section = text[start + 1:]
    following = section.find("\n## ", len(heading))
    section = section if following < 0 else section[:following]
    match = re.search(r"^```python\n(.*?)^```$", section, flags=re.S | re.M)
    assert match, f"README.md section {heading!r} has no ```python block"
    return match.group(1)


def test_readme_python_api_example_runs_as_written(tmp_path):
    code = readme_python_block("## Python API")
    assert code.startswith("from torch_utils.persistence import load_network\nnet = load_network(")
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    match = re.fullmatch(r"FBP (\d+\.\d+) dB, PaDIS (\d+\.\d+) dB\n", res.stdout)
    assert match, res.stdout
    fbp, padis = map(float, match.groups())
    assert padis > fbp + 1, res.stdout  # 3 levels of the prior already beat FBP clearly on this crop
