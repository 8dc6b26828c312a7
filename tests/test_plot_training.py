"""benchmarks/plot_training.py: repeated ticks dropped, stages joined on a cumulative kimg axis."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import plot_training  # noqa: E402


def _stats(path: Path, rows: list[tuple[float, float]]) -> Path:
    path.write_text("".join(json.dumps(dict(kimg=k, loss=v)) + "\n" for k, v in rows) + '{"kimg": 9, "lo')
    return path


def test_resumed_ticks_keep_the_last_line(tmp_path):
    rows = plot_training.read_stats(_stats(tmp_path / "a.jsonl", [(1, 0.5), (2, 0.4), (2, 0.3), (3, 0.2)]))
    assert [(r["kimg"], r["loss"]) for r in rows] == [(1, 0.5), (2, 0.3), (3, 0.2)]


def test_stages_count_on(tmp_path):
    a = _stats(tmp_path / "a.jsonl", [(1, 0.5), (2, 0.4)])
    b = _stats(tmp_path / "b.jsonl", [(1, 0.3), (3, 0.2)])
    kimg, loss, starts = plot_training.join_stages([a, b])
    assert kimg == [1, 2, 3, 5] and loss == [0.5, 0.4, 0.3, 0.2] and starts == [2]
    out = tmp_path / "loss.png"
    result = CliRunner().invoke(plot_training.main, [str(a), str(b), "--out", str(out), "--mark", "4"])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 1000
