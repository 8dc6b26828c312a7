"""inverse.config.ReconConfig: defaults, strict from_dict, to_dict, and resuming run
directories whose config.json was written before the dataclass existed."""

from __future__ import annotations

import json

import pytest

from inverse.config import ReconConfig
from inverse.stages import check_resume_config

# config.json of a run made by the code before ReconConfig (every key it wrote; paths made relative).
OLD_CONFIG = {
    "precision": "fp32", "channels_last": False, "compile": False, "images_per_batch": 2,
    "parallel_baselines": False, "network": "checkpoints/ct_head_small.safetensors", "input": "in",
    "measurements": None, "image_size": None, "mat_key": "images", "normalize": False, "max_images": None,
    "hu_window": None, "problem": "ct_parbeam", "noise": 0.005, "problem_kwargs": {"views": 20},
    "prior": "patch", "pad": None, "psize": None, "stride": None, "batch": None, "solver": "dds",
    "solver_kwargs": {}, "steps": 3, "sigma_min": 0.003, "sigma_max": 1.0, "baselines": ["fbp", "tv"],
    "tv_weight": None, "tv_iters": 5, "outdir": "out", "seed": 0, "resume": None, "device": "cpu",
    "patch_range": [16, 64], "grid": {"256x256": {"pad": 24, "psize": 56, "chosen": True}},
    "run_dir": "out/00000-ct_parbeam-dds",
}


def test_from_dict_rejects_unknown_keys_and_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown reconstruction option\(s\) 'stepz'; valid: network, problem, "):
        ReconConfig.from_dict(dict(network="n.safetensors", problem="denoise", stepz=3))
    with pytest.raises(ValueError, match="'network' missing"):
        ReconConfig.from_dict(dict(problem="denoise"))
    with pytest.raises(ValueError, match="'stepz'"):
        ReconConfig(network="n", problem="denoise").replace(stepz=3)


def test_defaults_round_trip_and_resolution():
    cfg = ReconConfig(network="n.safetensors", problem="ct_parbeam")
    assert cfg.baselines == ["fbp", "tv"] and cfg.solver == "diffpir" and cfg.noise is None
    assert ReconConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    r = cfg.replace(device="cpu").resolved()
    assert (r.noise, r.steps, r.sigma_min, r.sigma_max) == (0.005, 20, 0.003, 1.0)
    assert ReconConfig(network="n", problem="denoise", steps=7).resolved().noise == 0.01
    assert ReconConfig(network="n", problem="denoise", steps=7, device="cpu").resolved().steps == 7


def test_tv_weight_defaults_per_problem():
    from inverse.baselines import TV_WEIGHT, TV_WEIGHTS
    weight = {p: ReconConfig(network="n", problem=p, device="cpu").resolved().tv_weight
              for p in ("ct_parbeam", "ct_fanbeam", "ct_lact", "deblur_uniform", "super", "denoise")}
    assert weight == dict(TV_WEIGHTS, denoise=TV_WEIGHT) and weight["ct_parbeam"] == 3e-4
    assert ReconConfig(network="n", problem="ct_parbeam", tv_weight=0.02, device="cpu").resolved().tv_weight == 0.02


def test_old_config_json_resumes(tmp_path, monkeypatch):
    """A run directory written before ReconConfig resumes with the same options (also from
    another working directory for relative paths, the free fields changed) and refuses
    a changed option naming it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(OLD_CONFIG))
    same = ReconConfig.from_dict({k: v for k, v in OLD_CONFIG.items() if k not in ("run_dir", "grid", "patch_range")})
    same = same.replace(tv_weight=1e-3)  # its tv_weight None ran TV at the global default of then
    check_resume_config(tmp_path, same.replace(outdir="elsewhere", device="cuda", compile=True, progress=False,
                                               resume=str(tmp_path)))
    check_resume_config(tmp_path, same.replace(network=str(tmp_path / OLD_CONFIG["network"])))
    with pytest.raises(ValueError, match="option 'steps' was 3 in that run, now 4"):
        check_resume_config(tmp_path, same.replace(steps=4))
    # tv_weight None there ran TV at the old global default; the CT default now differs
    with pytest.raises(ValueError, match="option 'tv_weight' was 0.001 in that run, now 0.0003"):
        check_resume_config(tmp_path, same.replace(tv_weight=None))  # the CT default now
    (tmp_path / "config.json").write_text(json.dumps(dict(OLD_CONFIG, stepz=1)))
    with pytest.raises(ValueError, match="resume=.*unknown reconstruction option"):
        check_resume_config(tmp_path, same)


def test_levels_default_per_problem():
    """DiffPIR on limited angle gets PROBLEM_SCHEDULES' 50 levels; others and explicit --steps stay."""
    from inverse.samplers import PROBLEM_SCHEDULES, SCHEDULE_DEFAULTS, schedule_defaults
    assert PROBLEM_SCHEDULES["diffpir"]["ct_lact"]["steps"] == 50
    assert ReconConfig(network="n", device="cpu", problem="ct_lact", solver="diffpir").resolved().steps == 50
    assert ReconConfig(network="n", device="cpu", problem="ct_lact", solver="diffpir", steps=7).resolved().steps == 7
    assert ReconConfig(network="n", device="cpu", problem="ct_parbeam", solver="diffpir").resolved().steps == 20
    assert ReconConfig(network="n", device="cpu", problem="ct_lact", solver="dds").resolved().steps == SCHEDULE_DEFAULTS["dds"]["steps"]
    assert schedule_defaults("diffpir", "ct_lact")["sigma_max"] == SCHEDULE_DEFAULTS["diffpir"]["sigma_max"]
    assert schedule_defaults("nope") is None
