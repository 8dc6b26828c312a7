"""benchmarks/bench_speed.py on a tiny random network: FLOP count, GFLOP/s and --images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import load_benchmark

REPO = Path(__file__).resolve().parents[1]


def _load():
    return load_benchmark("bench_speed")


def _run(mod, tmp_path, images: int) -> dict:
    out = tmp_path / f"bs{images}.json"
    res = CliRunner().invoke(mod.main, ["--arch", "tiny", "--size", "40", "--pad", "8", "--psize", "16",
                                        "--images", str(images), "--variants", "fp32,bf16", "--repeats", "1",
                                        "--device", "cpu", "--threads", "1", "--gemm-size", "64",
                                        "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "GFLOP/s" in res.output and "GEMM 64^3" in res.output
    return json.loads(out.read_text())


def test_flops_scale_with_images_and_give_gflops(tmp_path):
    mod = _load()
    one, two = _run(mod, tmp_path, 1), _run(mod, tmp_path, 2)
    assert one["config"]["patches"] == 9 and two["config"]["patches"] == 18  # 40 // 16 + 1 = 3 per axis
    assert one["config"]["flops_per_call"] > 0
    assert two["config"]["flops_per_call"] == 2 * one["config"]["flops_per_call"]
    for row in two["rows"]:
        assert row["gflops"] == pytest.approx(two["config"]["flops_per_call"] / row["median_s"] / 1e9)
        assert row["gemm_gflops"] > 0
        assert row["percent_of_gemm"] == pytest.approx(100 * row["gflops"] / row["gemm_gflops"])

