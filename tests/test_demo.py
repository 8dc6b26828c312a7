"""inverse.demo: the evaluation set excludes the tuning slice; one case end to end (tiny net)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from inverse import cases, demo


def test_ct_case_uses_held_out_slices_only(tmp_path: Path):
    cfg = demo.case_config("ct_parbeam_20", "net.safetensors", tmp_path, "cpu", 0, 24, 56)
    staged = sorted(p.stem for p in Path(cfg.input).iterdir())
    held_out = sorted(p.stem for p in cases.HELD_OUT.glob("slice_*.png"))
    tune = sorted(p.stem for p in cases.TUNE_DIR.glob("slice_*.png"))
    assert tune and not set(tune) & set(held_out)
    assert staged == held_out[::cases.EVAL_STRIDE] and len(staged) == 5
    assert min(staged) <= "slice_029" and max(staged) >= "slice_082"  # both test slabs
    assert cfg.solver == "diffpir" and cfg.solver_kwargs["lam"] == cases.CASES["ct_parbeam_20"].lam


def test_demo_one_case_end_to_end(tmp_path: Path):
    from torch_utils.persistence import save_network
    from training.networks import build_network

    net = save_network(build_network("tiny", img_resolution=304, image_channels=1).eval(), tmp_path / "t.safetensors")
    res = CliRunner().invoke(demo.main, ["--network", str(net), "--outdir", str(tmp_path / "out"),
                                         "--cases", "super_x4", "--device", "cpu"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    [run] = list((tmp_path / "out").iterdir())
    report = json.loads((run / "demo.json").read_text())
    assert set(report["cases"]["super_x4"]["methods"]) == {"pinv", "tv", "padis"}
    assert "| super_x4 | 1 | PaDIS |" in (run / "demo.md").read_text() and "comparison.png" in res.output
    bad = CliRunner().invoke(demo.main, ["--network", str(net), "--cases", "ct_99"])
    assert bad.exit_code == 2 and "ct_99" in bad.output
