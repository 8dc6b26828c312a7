"""--precision bf16 on a CPU without native bf16: one warning line naming the option, from the
CPU flags (torch_utils.misc.bf16_cpu_warning, fed fake /proc/cpuinfo text), in inverse_nodist.py
and train.py; never a refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import write_noise_images

import inverse_nodist
import train
from torch_utils import misc

EPYC_AVX2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
XEON_AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_tile amx_bf16 amx_int8\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
GRAVITON3 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve bf16 i8mm\n"
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd crc32 atomics\n"


@pytest.mark.parametrize("text", [XEON_AMX, ZEN4, GRAVITON3])
def test_native_bf16_cpus_get_no_warning(text):
    assert misc.bf16_cpu_warning("bf16", "cpu", cpuinfo=text) is None


@pytest.mark.parametrize("text, flag", [(EPYC_AVX2, "avx512_bf16"), (GRAVITON2, "bf16")])
def test_cpu_without_native_bf16_gets_one_line_naming_the_option(text, flag):
    msg = misc.bf16_cpu_warning("bf16", "cpu", cpuinfo=text, path="/fake/cpuinfo")
    assert msg.startswith("precision=bf16 on device cpu: this CPU has no native bf16")
    assert "\n" not in msg and flag in msg and "/fake/cpuinfo" in msg and "slower than fp32" in msg


def test_unreadable_or_flagless_cpuinfo_is_unknown_and_warns_that_it_may_be_slow(tmp_path):
    for msg in (misc.bf16_cpu_warning("bf16", "cpu", path=tmp_path / "missing"),
                misc.bf16_cpu_warning("bf16", "cpu", cpuinfo="processor\t: 0\nmodel name\t: some CPU\n")):
        assert msg.startswith("precision=bf16 on device cpu: cannot tell whether this CPU has native bf16")
        assert "\n" not in msg
    (tmp_path / "cpuinfo").write_text(ZEN4)
    assert misc.bf16_cpu_warning("bf16", "cpu", path=tmp_path / "cpuinfo") is None  # read from the path


def test_other_precisions_and_devices_are_not_checked():
    for precision, device in (("fp32", "cpu"), ("fp16", "cuda"), ("bf16", "cuda"), ("bf16", torch.device("cuda", 1))):
        assert misc.bf16_cpu_warning(precision, device, cpuinfo=EPYC_AVX2) is None
    assert misc.bf16_cpu_warning("bf16", torch.device("cpu"), cpuinfo=EPYC_AVX2) is not None


@pytest.fixture
def fake_cpu(tmp_path, monkeypatch):
    """Point the CLIs' check at a fake cpuinfo file; returns a function that writes its text."""
    path = tmp_path / "cpuinfo"
    monkeypatch.setattr(misc, "CPUINFO", str(path))
    monkeypatch.delenv("RANK", raising=False)
    return path.write_text


def _warnings(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]


def test_inverse_nodist_warns_once_and_still_runs_bf16(fake_cpu, tmp_path, tiny_patch_net):
    from torch_utils.persistence import save_network

    net = save_network(tiny_patch_net, tmp_path / "tiny.safetensors")
    np.save(tmp_path / "x.npy", np.zeros((1, 16, 16), np.float32))
    args = ["--network", str(net), "--input", str(tmp_path / "x.npy"), "--problem", "ct_parbeam",
            "--device", "cpu", "--dry-run"]
    fake_cpu(EPYC_AVX2)
    res = CliRunner().invoke(inverse_nodist.main, [*args, "--precision", "bf16"])
    assert res.exit_code == 0, res.output
    assert _warnings(res) == [f"warning: --precision bf16 on device cpu: this CPU has no native bf16 (no avx512_bf16 "
                              f"or amx_bf16 flag, aarch64: bf16, in {misc.CPUINFO}); autocast then emulates bf16, "
                              "often 20x or more slower than fp32; --precision fp32 is faster there"]
    assert '"precision": "bf16"' in res.stdout  # a warning, not a refusal
    assert _warnings(CliRunner().invoke(inverse_nodist.main, [*args, "--precision", "fp32"])) == []
    fake_cpu(ZEN4)
    assert _warnings(CliRunner().invoke(inverse_nodist.main, [*args, "--precision", "bf16"])) == []


def test_train_warns_once(fake_cpu, tmp_path):
    data = write_noise_images(tmp_path / "pngs", n=2)
    args = ["--data", str(data), "--outdir", str(tmp_path / "runs"), "--arch", "tiny", "--device", "cpu", "--dry-run"]
    fake_cpu(EPYC_AVX2)
    res = CliRunner().invoke(train.main, [*args, "--precision", "bf16"])
    assert res.exit_code == 0, res.output
    (line,) = _warnings(res)
    assert line.startswith("warning: --precision bf16 on device cpu: this CPU has no native bf16")
    assert '"precision": "bf16"' in res.stdout
    fake_cpu(XEON_AMX)
    assert _warnings(CliRunner().invoke(train.main, [*args, "--precision", "bf16"])) == []
