"""Smoke test of benchmarks/bench_batch.py (images/s vs --images-per-batch) on a tiny random network."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from helpers import load_benchmark

REPO = Path(__file__).resolve().parents[1]


def _load():
    return load_benchmark("bench_batch")


@pytest.mark.slow
def test_bench_batch_reports_each_k(tmp_path):
    mod = _load()
    out = tmp_path / "bb.json"
    res = CliRunner().invoke(mod.main, ["--arch", "tiny", "--ks", "1,2", "--images", "2", "--steps", "1",
                                        "--device", "cpu", "--threads", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert [r["k"] for r in data["rows"]] == [1, 2]
    for r in data["rows"]:
        assert r["images"] == 2 and r["calls_per_image"] == 1 and r["solve_seconds"] > 0
        assert r["images_per_s"] == pytest.approx(2 / r["solve_seconds"])
    assert "| 2 | 2 |" in res.output and data["meta"]["network"] == "tiny"


def test_bench_batch_rejects_bad_ks():
    mod = _load()
    for bad in ("0,1", "a", ""):
        with pytest.raises(click.BadParameter, match="positive integers"):
            mod._ks(bad)
    assert mod._ks("1, 4,8") == [1, 4, 8]
