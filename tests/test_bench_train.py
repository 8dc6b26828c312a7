"""benchmarks/bench_train.py --variants: one tiny step per variant, the ratio vs base, errors."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from click.testing import CliRunner
from helpers import load_benchmark

# A 16x16 image padded by 4, 4 patches of 8x8 per step, one timed step: well under a second each.
TINY = ["--arch", "tiny", "--steps", "1", "--resolution", "16", "--pad", "4", "--patch-sizes", "8",
        "--patches", "4", "--device", "cpu", "--skip-whole", "--threads", "1"]


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_train")


def _invoke(bench, args, tmp_path, expect=0):
    out = tmp_path / "bench_train.json"
    res = CliRunner().invoke(bench.main, TINY + args + ["--out", str(out)])
    assert res.exit_code == expect, (res.output, res.exception)
    return res, (json.loads(out.read_text()) if expect == 0 else None)


@pytest.fixture
def in_process(bench, monkeypatch):
    """The workers run in this process (so torch.compile and the network can be watched);
    torch's thread count is restored after each."""
    def run(cmd, **kwargs):
        spec = json.loads(cmd[cmd.index("--worker") + 1])
        threads = torch.get_num_threads()
        try:
            out = json.dumps(bench._measure(spec))
        finally:
            torch.set_num_threads(threads)
        return subprocess.CompletedProcess(cmd, 0, stdout=out + "\n", stderr="")

    monkeypatch.setattr(bench.subprocess, "run", run)


def test_variants_smoke_in_fresh_processes(bench, tmp_path):
    res, data = _invoke(bench, ["--variants", "base,channels_last,bf16,threads2"], tmp_path)
    rows = {r["variant"]: r for r in data["rows"]}
    assert list(rows) == ["base", "channels_last", "bf16", "threads2"] == data["variants"]
    assert [(r["precision"], r["channels_last"], r["compile"], r["threads"]) for r in rows.values()] == [
        ("fp32", False, False, 1), ("fp32", True, False, 1), ("bf16", False, False, 1), ("fp32", False, False, 2)]
    for r in rows.values():
        assert r["patches_per_s"] > 0 and r["warmup_s"] > 0 and r["compile_failure"] is None
        assert r["speed_vs_base"] == pytest.approx(r["patches_per_s"] / rows["base"]["patches_per_s"])
    assert rows["base"]["speed_vs_base"] == 1
    table = res.output.splitlines()
    head = next(line for line in table if line.startswith("config"))
    assert "vs base" in head and "warm-up s" in head
    for name in rows:
        assert any(line.split()[:2] == ["patch-8", name] for line in table), name


def test_base_is_the_reference_wherever_it_is_listed(bench, tmp_path, in_process):
    _, data = _invoke(bench, ["--variants", "bf16,base"], tmp_path)
    bf16, base = data["rows"]
    assert (bf16["variant"], base["variant"]) == ("bf16", "base")
    assert base["speed_vs_base"] == 1
    assert bf16["speed_vs_base"] == pytest.approx(bf16["patches_per_s"] / base["patches_per_s"])


def test_without_variants_the_precisions_compare_to_the_first(bench, tmp_path, in_process):
    _, data = _invoke(bench, ["--precision", "bf16,fp32"], tmp_path)
    assert data["variants"] is None and [r["variant"] for r in data["rows"]] == ["bf16", "fp32"]
    bf16, fp32 = data["rows"]
    assert bf16["speed_vs_base"] == 1
    assert fp32["speed_vs_base"] == pytest.approx(fp32["patches_per_s"] / bf16["patches_per_s"])


def test_compile_and_channels_last_reach_the_network(bench, tmp_path, in_process, monkeypatch):
    from training.networks import PatchEDMPrecond

    compiled, layouts = [], []

    def fake_compile(net):  # stands in for torch.compile (which takes minutes on a CPU)
        compiled.append(net)
        return lambda *args: net(*args)

    real_forward = PatchEDMPrecond.forward

    def watch(self, x, sigma, pos=None, **kw):
        cl = torch.channels_last
        weight = next(p for p in self.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1)  # a 3x3 conv
        layouts.append((pos.is_contiguous(memory_format=cl) and not pos.is_contiguous(),
                        weight.is_contiguous(memory_format=cl) and not weight.is_contiguous()))
        return real_forward(self, x, sigma, pos, **kw)

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(PatchEDMPrecond, "forward", watch)
    _, data = _invoke(bench, ["--variants", "base,compile,channels_last+compile"], tmp_path)
    assert len(compiled) == 2 and all(isinstance(n, PatchEDMPrecond) for n in compiled)
    calls = len(layouts) // 3  # every variant makes the same network calls
    assert len(layouts) == 3 * calls and calls >= 2
    assert set(layouts[:2 * calls]) == {(False, False)}  # base, compile: the default layout
    assert set(layouts[2 * calls:]) == {(True, True)}  # inputs and weights channels-last
    assert [r["compile"] for r in data["rows"]] == [False, True, True]


def test_a_failed_compile_is_a_row_not_an_abort(bench, tmp_path, in_process, monkeypatch):
    def broken(net):
        def call(*args):
            raise RuntimeError("no C++ compiler\nsecond line")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    res, data = _invoke(bench, ["--variants", "base,compile"], tmp_path)
    base, comp = data["rows"]
    assert base["patches_per_s"] > 0 and base["speed_vs_base"] == 1
    assert comp["patches_per_s"] is None and comp["speed_vs_base"] is None
    assert comp["compile_failure"] == "RuntimeError: no C++ compiler"
    assert any(line.split()[:2] == ["patch-8", "compile"] and "compile failed: RuntimeError: no C++ compiler" in line
               for line in res.output.splitlines())


@pytest.mark.parametrize("args, flag, words", [
    (["--variants", "base,fast"], "--variants", "unknown part 'fast'"),
    (["--variants", "threads0"], "--variants", "unknown part 'threads0'"),
    (["--variants", "bf16+fp32"], "--variants", "sets precision twice"),
    (["--variants", "base,base"], "--variants", "distinct variants"),
    (["--variants", "fp16"], "--variants", "fp16 needs a CUDA device"),
    (["--variants", "base", "--precision", "fp32,bf16"], "--precision", "the base step's one precision"),
])
def test_bad_variants_name_the_option(bench, tmp_path, args, flag, words):
    res, _ = _invoke(bench, args, tmp_path, expect=2)
    [line] = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert f"Invalid value for {flag}:" in line and words in line
