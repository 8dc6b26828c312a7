"""Equivalence with the paper's own code (jasonhu4/PaDIS), measured row by row.

    python benchmarks/paper_equiv.py --paper /path/to/PaDIS-checkout

The paper's code runs in its own process (``benchmarks/paper_equiv_child.py``: a copy of the
checkout patched for CPU at run time); this process runs padis on the same inputs and compares:

(a) the paper's ``Patch_EDMPrecond`` pickled as its training loop pickles a snapshot (a tiny and
    the paper-size configuration, seeded weights) vs ``torch_utils.persistence.load_network`` on
    that pickle: the denoiser D(x, sigma, pos) over sigma 0.01-10;
(b) its ``denoisedFromPatches`` at fixed grid offsets vs ``inverse.prior.PatchPrior``;
(c) its ``dps`` from its own start, one inner iteration, vs ``sample_dps(dc_step='paper')`` with
    the same y, grid offsets and Langevin noise; the paper's state is the padded canvas, ours the
    image: compared on the image, the canvas ring reported (and ten iterations, to show the drift);
(d) its ODL operators (parallel beam, fan beam, limited angle) vs ``inverse.operators``;
(e) its README commands (inverse_nodist.py at a tiny size, train.py as a dry run) vs ours.

Prints one markdown table and writes ``benchmarks/results/paper_equiv/paper_equiv.{md,json}``
and the tensors-only fixtures ``tests/fixtures/paper_equiv/`` (inputs and the paper's outputs;
never a pickle) that tests/test_paper_equiv.py checks padis against without the paper's code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = REPO / "benchmarks" / "paper_equiv_child.py"
FIXTURES = REPO / "tests" / "fixtures" / "paper_equiv"
RESULTS = REPO / "benchmarks" / "results" / "paper_equiv"
SLICE = REPO / "datasets" / "ct_head" / "test" / "slice_025.png"

# (a) The paper's train.py network kwargs for --arch ddpmpp (with --dropout 0.05, as its README
# command) plus the interface kwargs its training loop adds (grayscale + 2 position channels).
DDPMPP = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard", decoder_type="standard",
              channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2],
              hash_channels=1, dropout=0.05, use_fp16=False)
DATASET_KWARGS = dict(class_name="training.dataset.ImageFolderDataset", path="mydata", use_labels=False, xflip=False,
                      cache=True)
NETWORKS = [
    # tiny: --cbase 16 --cres 1,2,2 and one block per level; img_resolution 64 names the levels
    # 64/32/16, so it has attention (at 16) where the paper-size one (384/192/96) has none.
    dict(name="tiny", seed=1, network_kwargs=DDPMPP | dict(model_channels=16, channel_mult=[1, 2, 2], num_blocks=1),
         interface_kwargs=dict(img_resolution=64, img_channels=3, out_channels=1, label_dim=0),
         dataset_kwargs=DATASET_KWARGS, sigmas=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]),
    # the paper's: 256 x 256 images padded by 64
    dict(name="paper", seed=2, network_kwargs=DDPMPP,
         interface_kwargs=dict(img_resolution=384, img_channels=3, out_channels=1, label_dim=0),
         dataset_kwargs=DATASET_KWARGS, sigmas=[0.01, 0.1, 1.0, 10.0]),
]
A_PATCH = 16  # (a) patch side of the denoiser inputs

# (b), (c), (e): 48 x 48 images, pad 16, psize 16 (4 x 4 patches of the tiny network)
SIZE, PAD, PSIZE = 48, 16, 16
B_SIGMAS = [0.01, 0.1, 1.0, 10.0]
B_OFFSETS = [(0, 0), (7, 3), (15, 15)]
ZETA, SIGMA_MIN, VIEWS = 0.3, 0.003, 20  # the paper README's
# (c) cases: the first inner iteration of dps at t = sigma_max (100 levels: the README's schedule);
# 'noise': Langevin noise injected (False: zero noise, the deterministic part alone).
C_CASES = [dict(sigma_max=10.0, num_steps=100, iterations=1, noise=True, offsets=[(5, 9)]),
           dict(sigma_max=1.0, num_steps=100, iterations=1, noise=True, offsets=[(12, 2)]),
           dict(sigma_max=0.1, num_steps=100, iterations=1, noise=True, offsets=[(0, 15)]),
           dict(sigma_max=1.0, num_steps=100, iterations=1, noise=False, offsets=[(8, 8)]),
           # not a fixture: ten inner iterations of one level (the canvas ring grows)
           dict(sigma_max=1.0, num_steps=100, iterations=10, noise=True,
                offsets=[(3, 4), (9, 1), (14, 7), (2, 12), (6, 6), (11, 13), (0, 5), (15, 0), (4, 10), (7, 2)])]
C_FIXTURE_CASES = 4

# (d) operators: the paper's InverseOperator names -> ours, and our options for the paper's geometry
PAPER_OPS = {"ct_parbeam": "ct_parbeam", "ct_fanbeam": "ct_fanbeam", "lact": "ct_lact"}
OUR_VARIANTS = {  # (label, our problem, our options); the paper's geometry is in the label
    "ct_parbeam": [("default", {})],
    "lact": [("default", {})],
    "ct_fanbeam": [("default (det 80, [0, 2pi))", {}), ("--det-extent 40", dict(det_extent=40.0)),
                   ("--det-extent 40 --angle-range 0,pi", dict(det_extent=40.0, angle_range=(0.0, math.pi)))],
}
D_SIZES = [48, 256]
D_FIXTURE_SIZE = 48

# (e) the paper README's commands, tiny where they name sizes
README_TRAIN = ["--outdir=training-runs", "--data=mydata", "--cond=0", "--arch=ddpmpp", "--batch=16", "--lr=1e-4",
                "--dropout=0.05", "--augment=0", "--real_p=0.5", "--padding=1", "--tick=2", "--snap=10",
                "--pad_width=64"]
README_RECON = ["--network={PKL}", "--outdir=results", "--image_dir={IMAGES}", f"--image_size={SIZE}", "--views=20",
                "--name=ct_parbeam", "--steps=2", "--sigma_min=0.003", "--sigma_max=10", "--zeta=0.3", f"--pad={PAD}",
                f"--psize={PSIZE}"]  # the README's, with 48 x 48 images (pad 16 / psize 16) and 2 levels


# ----------------------------------------------------------------------------------------
# Inputs


def test_image(size: int) -> np.ndarray:
    """(1, size, size) float32 in [0, 1] read as the paper's main reads a PNG (uint8 / 255):
    the shipped test slice 025, whole (256) or its central crop."""
    import PIL.Image
    img = np.asarray(PIL.Image.open(SLICE), dtype=np.float64) / 255
    top = (img.shape[0] - size) // 2
    return img[top:top + size, top:top + size][None].astype(np.float32)


def make_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    from training.networks import position_grid
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    clean = test_image(SIZE)
    grid = position_grid(SIZE + 2 * PAD, SIZE + 2 * PAD).numpy()[0]
    for cfg in NETWORKS:
        n = len(cfg["sigmas"])
        tops = rng.integers(0, SIZE + 2 * PAD - A_PATCH, size=(n, 2))
        base = np.stack([np.pad(clean, ((0, 0), (PAD, PAD), (PAD, PAD)))[:, r:r + A_PATCH, c:c + A_PATCH]
                         for r, c in tops])
        sig = np.asarray(cfg["sigmas"], dtype=np.float32)
        inputs[f"a_{cfg['name']}_x"] = (base + sig[:, None, None, None]
                                        * rng.standard_normal(base.shape)).astype(np.float32)
        inputs[f"a_{cfg['name']}_sigma"] = sig
        inputs[f"a_{cfg['name']}_pos"] = np.stack([grid[:, r:r + A_PATCH, c:c + A_PATCH] for r, c in tops])
    inputs["b_clean"] = clean
    inputs["b_z"] = rng.standard_normal(clean.shape).astype(np.float32)
    inputs["c_clean"] = clean
    n = SIZE + 2 * PAD
    for k, case in enumerate(C_CASES):
        z = rng.standard_normal((case["iterations"], 1, n, n)).astype(np.float32)
        inputs[f"c_z{k}"] = z if case["noise"] else np.zeros_like(z)
    for size in D_SIZES:
        inputs[f"d_x{size}"] = test_image(size)
    return inputs


def make_spec(work: Path) -> dict:
    b_cases = [(s, o) for s in B_SIGMAS for o in B_OFFSETS]
    return dict(
        networks=[{k: v for k, v in cfg.items() if k != "sigmas"} for cfg in NETWORKS], patch_network="tiny",
        patches=dict(image_size=SIZE, pad=PAD, psize=PSIZE, sigmas=[s for s, _ in b_cases],
                     offsets=[list(o) for _, o in b_cases]),
        dps=dict(image_size=SIZE, pad=PAD, psize=PSIZE, problem="ct_parbeam", views=VIEWS, zeta=ZETA,
                 sigma_min=SIGMA_MIN, cases=[dict(c, offsets=[list(o) for o in c["offsets"]]) for c in C_CASES]),
        operators=dict(sizes=D_SIZES, names=list(PAPER_OPS), views=VIEWS),
        command=dict(args=README_RECON, pickle=str(work / "pickles" / "network-snapshot-tiny.pkl"), run_dps=True),
        train=dict(args=README_TRAIN, master_port=29611),
    )


def write_png_dirs(work: Path) -> None:
    """image_dir/ (one 48 x 48 PNG, the README command's input) and mydata/ (for the train dry runs)."""
    import PIL.Image
    for sub in ("image_dir", "mydata"):
        (work / sub).mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(np.round(test_image(SIZE)[0] * 255).astype(np.uint8)).save(work / sub / "slice_025.png")


def run_child(paper: Path, work: Path, tasks: str, threads: int) -> tuple[dict, dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PADIS_EQUIV_THREADS"] = str(threads)
    cmd = [sys.executable, str(CHILD), "--checkout", str(paper), "--work", str(work), "--tasks", tasks]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    (work / f"child_{tasks.replace(',', '_')}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"the paper's side failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    suffix = "_train" if tasks == "train" else ""
    return dict(np.load(work / f"paper{suffix}.npz")), json.loads((work / f"paper{suffix}.json").read_text())


def run_cli(script: str, argv: list[str], cwd: Path, threads: int) -> str:
    """Run one of our command-line scripts of this checkout in a subprocess; its stdout."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, str(REPO / script), *argv], cwd=cwd, env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"our {script} {' '.join(argv)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc.stdout


# ----------------------------------------------------------------------------------------
# padis' side (also used by tests/test_paper_equiv.py)


def errors(ours, paper) -> dict:
    """max |ours - paper|, ||ours - paper|| / ||paper||, max |paper|."""
    o = np.asarray(ours, dtype=np.float64)
    p = np.asarray(paper, dtype=np.float64)
    d = o - p
    return dict(max_abs=float(np.abs(d).max()), rel=float(np.linalg.norm(d) / max(np.linalg.norm(p), 1e-300)),
                ref_max=float(np.abs(p).max()))


def scale_fit(ours, paper) -> dict:
    """The scalar s minimising ||ours - s paper|| and the relative rest ||ours - s paper|| / ||ours||."""
    o = np.asarray(ours, dtype=np.float64).ravel()
    p = np.asarray(paper, dtype=np.float64).ravel()
    s = float(o @ p / max(p @ p, 1e-300))
    return dict(scale=s, rel_after_scale=float(np.linalg.norm(o - s * p) / max(np.linalg.norm(o), 1e-300)))


def ours_network_outputs(net, x: np.ndarray, sigma: np.ndarray, pos: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x), torch.from_numpy(sigma), torch.from_numpy(pos)).numpy()


def ours_patches(net, clean: np.ndarray, z: np.ndarray, sigmas, offsets) -> np.ndarray:
    """PatchPrior(pad 16, psize 16) at each (sigma, offset) on clean + sigma z: (cases, C, H, W)."""
    from inverse.prior import PatchPrior
    prior = PatchPrior(net, pad=PAD, psize=PSIZE)
    c, zz = torch.from_numpy(clean), torch.from_numpy(z)
    outs = []
    with torch.no_grad():
        for sigma, offset in zip(sigmas, offsets):
            outs.append(prior((c + sigma * zz)[None], float(sigma), offset=tuple(offset))[0].numpy())
    return np.stack(outs)


class FixedOffsets:
    """A prior that calls ``prior`` at the given grid offsets in turn and records its inputs."""

    def __init__(self, prior, offsets):
        self.prior, self.offsets, self.inputs = prior, [tuple(o) for o in offsets], []

    def __call__(self, x, sigma, generator=None):
        offset = self.offsets[len(self.inputs) % len(self.offsets)]
        self.inputs.append(x.detach().clone())
        return self.prior(x, sigma, generator, offset=offset)


class _Stop(Exception):
    pass


@contextlib.contextmanager
def injected_noise(noise: torch.Tensor):
    """While active, the solvers' Langevin noise is ``noise[0], noise[1], ...``."""
    from inverse import samplers
    draws = iter(noise)
    real = samplers.randn_like
    samplers.randn_like = lambda x, generator: next(draws).reshape(x.shape).to(x.dtype)
    try:
        yield
    finally:
        samplers.randn_like = real


def ours_dps(net, y: np.ndarray, t_cur: float, t_next: float, iterations: int, offsets, noise: np.ndarray
             ) -> np.ndarray:
    """``sample_dps(dc_step='paper', zeta 0.3)`` from its own start (clamp(pinv(y))), levels
    (t_cur, t_next), ``iterations`` inner iterations of the first level, with the grid offsets
    and the Langevin noise (image-shaped, (iterations, C, H, W)) given. Returns the image before
    each iteration and after the last: (iterations + 1, C, H, W)."""
    from inverse.operators import make_operator
    from inverse.prior import PatchPrior
    from inverse.samplers import sample_dps
    op = make_operator("ct_parbeam", (SIZE, SIZE), views=VIEWS)
    prior = FixedOffsets(PatchPrior(net, pad=PAD, psize=PSIZE), offsets)
    after = []

    def stop(d):
        after.append(d["x"].detach().clone())
        raise _Stop

    with injected_noise(torch.from_numpy(noise)), contextlib.suppress(_Stop):
        sample_dps(prior, op, torch.from_numpy(y).reshape(1, 1, *y.shape[-2:]),
                   torch.tensor([t_cur, t_next], dtype=torch.float64), torch.Generator().manual_seed(0),
                   callback=stop, zeta=ZETA, inner=iterations, dc_step="paper")
    return torch.cat(prior.inputs + after).numpy()


def edge_split(ours: np.ndarray, paper: np.ndarray) -> tuple[float, float]:
    """max |ours - paper| within PSIZE pixels of the image edge (next to the canvas ring) and inside."""
    d = np.abs(np.asarray(ours, dtype=np.float64) - paper)
    band = np.ones(d.shape[-2:], dtype=bool)
    band[PSIZE:-PSIZE, PSIZE:-PSIZE] = False
    return float(d[..., band].max()), float(d[..., ~band].max())


def image_part(canvas: np.ndarray) -> np.ndarray:
    return canvas[..., PAD:PAD + SIZE, PAD:PAD + SIZE]


def our_operator(name: str, size: int, options: dict):
    from inverse.operators import make_operator
    return make_operator(name, (size, size), views=VIEWS, **options)


def ours_operator_outputs(op, x: np.ndarray, y_paper: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        yp = torch.from_numpy(y_paper).reshape(1, 1, *y_paper.shape[-2:])
        return dict(A=op.A(torch.from_numpy(x)[None]).numpy()[0], AT=op.AT(yp).numpy()[0],
                    pinv=op.pinv(yp).numpy()[0])


def geometry_of(op) -> dict:
    g = op.projector.ray.geometry
    space = op.projector.ray.domain
    return dict(geometry=type(g).__name__, angle_min=float(g.motion_partition.min_pt[0]),
                angle_max=float(g.motion_partition.max_pt[0]), views=int(g.motion_partition.shape[0]),
                det_min=float(g.det_partition.min_pt[0]), det_max=float(g.det_partition.max_pt[0]),
                det_count=int(g.det_partition.shape[0]), space_min=[float(v) for v in space.min_pt],
                space_max=[float(v) for v in space.max_pt], shape=list(space.shape),
                src_radius=float(getattr(g, "src_radius", 0.0)), det_radius=float(getattr(g, "det_radius", 0.0)))


LAYOUT_KEYS = ("geometry", "angle_min", "angle_max", "views", "det_min", "det_max", "det_count", "space_min",
               "space_max", "shape", "src_radius", "det_radius")


def layout_differences(ours: dict, paper: dict) -> list[str]:
    out = []
    for k in LAYOUT_KEYS:
        a, b = ours[k], paper[k]
        same = np.allclose(a, b, rtol=1e-9, atol=1e-9) if not isinstance(a, str) else a == b
        if not same:
            out.append(f"{k} {b} (paper) vs {a}")
    return out


# The paper's training loop adds batch x sum(p_i x (4, 2, 1)) = 1.9 x batch (real_p 0.5) to its
# image count per step whatever patch size it drew; padis adds the patches, batch x 64/32/16.
KIMG_NOTE = "same number; the units differ: the paper counts 1.9 x batch per step, padis the patches (16 x that on average)"


def train_rows(paper: dict, ours: dict) -> list[dict]:
    """The paper's train.py configuration (its dry run's 'Training options' plus the defaults of
    its training loop, SongUNet and loss it does not print) against our train.py dry run of the
    same command: one row per setting, 'same' or the two values."""
    from training.networks import ARCHS
    opts, defaults = paper["options"], paper["defaults"]
    net_kwargs = {k: v for k, v in opts["network_kwargs"].items() if k not in ("class_name",)}
    ours_net = ARCHS[ours["arch"]] | ours["arch_overrides"]
    rows = []

    def row(setting, p, o, note=""):
        same = (np.allclose(p, o) if isinstance(p, (int, float)) and isinstance(o, (int, float))
                and not isinstance(p, bool) else p == o)
        rows.append(dict(setting=setting, paper=p, ours=o, same=bool(same), note=note))

    row("network class", opts["network_kwargs"]["class_name"].split(".")[-1], "Patch_EDMPrecond"
        if ours["positional"] else "EDMPrecond")
    for k in ("model_type", "embedding_type", "encoder_type", "decoder_type", "channel_mult_noise", "resample_filter",
              "model_channels", "channel_mult", "dropout"):
        row(f"network {k}", net_kwargs[k], ours_net[k])
    for k in ("num_blocks", "attn_resolutions"):
        row(f"network {k}", defaults["SongUNet"][k], ours_net[k], "SongUNet default")
    row("network hash_channels", net_kwargs["hash_channels"], 1, "padis accepts only 1")
    row("fp16", net_kwargs["use_fp16"], ours["precision"] == "fp16")
    row("loss", opts["loss_kwargs"]["class_name"].split(".")[-1], "Patch_EDMLoss")
    for k in ("P_mean", "P_std", "sigma_data"):
        row(f"loss {k}", defaults["Patch_EDMLoss"][k], ours["loss_kwargs"][k], "Patch_EDMLoss default")
    row("optimizer", opts["optimizer_kwargs"]["class_name"], "torch.optim.Adam")
    row("lr", opts["optimizer_kwargs"]["lr"], ours["lr"])
    row("Adam betas", opts["optimizer_kwargs"]["betas"], ours["adam_betas"])
    row("Adam eps", opts["optimizer_kwargs"]["eps"], ours["adam_eps"])
    row("batch", opts["batch_size"], ours["batch"])
    row("batch per GPU", opts["batch_gpu"], ours["batch_gpu"])
    row("real_p", opts["real_p"], ours["real_p"])
    row("pad_width", opts["pad_width"], ours["pad_width"])
    row("zero padding", opts["padding"], ours["pad_width"] > 0)
    row("x-flips", opts["dataset_kwargs"]["xflip"], ours["xflip"])
    row("class labels", opts["dataset_kwargs"]["use_labels"], False)
    row("tick [kimg]", opts["kimg_per_tick"], ours["tick_kimg"], KIMG_NOTE)
    row("snapshot every [ticks]", opts["snapshot_ticks"], ours["snap_ticks"])
    row("state dump every [ticks]", opts["state_dump_ticks"], ours["dump_ticks"], "default (no --dump given)")
    row("duration [kimg]", opts["total_kimg"], ours["duration_mimg"] * 1000, "default (no --duration given)")
    row("EMA half-life [kimg]", opts["ema_halflife_kimg"], ours["ema_halflife_kimg"], "default (no --ema given)")
    row("EMA ramp-up ratio", defaults["training_loop"]["ema_rampup_ratio"], ours["ema_rampup_ratio"])
    row("lr ramp-up [kimg]", defaults["training_loop"]["lr_rampup_kimg"], ours["lr_rampup_kimg"],
        "training-loop default (no option in the paper's train.py)")
    row("loss scaling", opts["loss_scaling"], 1, "padis: automatic with fp16")
    row("seed", "random" if "seed" in opts and paper.get("seed_given") is False else opts.get("seed"), ours["seed"],
        "no --seed given: the paper draws one")
    return rows


def recon_rows(paper: dict, ours: dict) -> list[dict]:
    """What the paper's inverse_nodist.py main() hands its dps against our inverse_nodist.py
    configuration for the same command."""
    from inverse.samplers import sampler_options
    kw = paper["kwargs"]
    opts = sampler_options(ours["solver"]) | ours["solver_kwargs"]
    rows = []

    def row(setting, p, o, note=""):
        same = np.allclose(p, o) if isinstance(p, (int, float)) and not isinstance(p, bool) else p == o
        rows.append(dict(setting=setting, paper=p, ours=o, same=bool(same), note=note))

    row("problem", paper["problem"], ours["problem"])
    row("views", paper["views"], ours["problem_kwargs"].get("views"))
    row("image size", paper["image_size"], ours["image_size"][0])
    row("pad", paper["pad"], ours["pad"])
    row("psize", paper["psize"], ours["psize"])
    row("levels (--steps)", kw["num_steps"], ours["steps"])
    row("sigma_min", kw["sigma_min"], ours["sigma_min"])
    row("sigma_max", kw["sigma_max"], ours["sigma_max"])
    row("schedule rho", kw["rho"], 7, "EDM schedule")
    row("zeta", kw["zeta"], opts["zeta"])
    row("solver", "dps", ours["solver"] if opts.get("dc_step") == "paper" else f"{ours['solver']} (not --dc-step paper)",
        "main() calls dps; ours: --solver dps --dc-step paper (a paper command's default)")
    row("inner iterations", 10, opts["inner"], "the paper's dps: range(10)")
    row("Langevin step alpha/sigma^2", 0.5, 2 * opts["eps"], "paper: alpha = 0.5 t^2, x += alpha/2 score")
    row("measurement noise std", 0.0, ours["noise"] if ours["noise_absolute"] else None, "--sigma default 0")
    return rows


# ----------------------------------------------------------------------------------------
# The benchmark


def fmt(v: float) -> str:
    return "0" if v == 0 else f"{v:.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", type=Path, required=True, help="A checkout of jasonhu4/PaDIS")
    parser.add_argument("--work", type=Path, help="Working directory [default: a new temporary one, removed after]")
    parser.add_argument("--outdir", type=Path, default=RESULTS)
    parser.add_argument("--fixtures", type=Path, default=FIXTURES, help="Where the tensors-only fixtures go")
    parser.add_argument("--no-fixtures", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reuse", action="store_true", help="Reuse the paper's outputs already in --work "
                        "(from an earlier run with the same --work) instead of running its code again")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    work = args.work or Path(tempfile.mkdtemp(prefix="paper_equiv_"))
    work.mkdir(parents=True, exist_ok=True)
    spec = make_spec(work)
    inputs = make_inputs()
    (work / "spec.json").write_text(json.dumps(spec, indent=1))
    np.savez(work / "inputs.npz", **inputs)
    write_png_dirs(work)
    if args.reuse:
        if args.work is None:
            raise SystemExit("--reuse needs --work (the directory of an earlier run)")
        paper, info = dict(np.load(work / "paper.npz")), json.loads((work / "paper.json").read_text())
        train_info = json.loads((work / "paper_train.json").read_text())
    else:
        paper, info = run_child(args.paper.resolve(), work, "network,command,patches,dps,operators", args.threads)
        _, train_info = run_child(args.paper.resolve(), work, "train", args.threads)

    from torch_utils.persistence import load_network
    rows, details, fixtures = [], {}, {}

    # (a) the network, loaded by our loader from the paper's pickle
    nets = {}
    for cfg in NETWORKS:
        name = cfg["name"]
        net = load_network(info["network"]["networks"][name]["pickle"]).eval()
        nets[name] = net
        names_equal = [n for n, _ in sorted(net.named_parameters())] == info["network"]["networks"][name]["parameter_names"]
        ours = ours_network_outputs(net, inputs[f"a_{name}_x"], inputs[f"a_{name}_sigma"], inputs[f"a_{name}_pos"])
        e = errors(ours, paper[f"a_{name}_D"])
        params = info["network"]["networks"][name]["parameters"]
        rows.append(dict(row="a", id=f"a_{name}", case=f"{name} network ({params:,} parameters), {len(cfg['sigmas'])} sigma "
                         f"{min(cfg['sigmas']):g}-{max(cfg['sigmas']):g}, {A_PATCH}x{A_PATCH} patches",
                         compared="D(x, sigma, pos) of load_network(its pickle)", **e,
                         note="parameter names equal" if names_equal else "PARAMETER NAMES DIFFER"))
        fixtures[f"a_{name}"] = dict(x=inputs[f"a_{name}_x"], sigma=inputs[f"a_{name}_sigma"],
                                     pos=inputs[f"a_{name}_pos"], D=paper[f"a_{name}_D"])
        details[f"a_{name}"] = dict(init_kwargs=info["network"]["networks"][name]["init_kwargs"], parameters=params,
                                    seed=cfg["seed"], parameter_names=info["network"]["networks"][name]["parameter_names"])

    # (b) stitching
    b = spec["patches"]
    ours_b = ours_patches(nets["tiny"], inputs["b_clean"], inputs["b_z"], b["sigmas"], b["offsets"])
    e = errors(ours_b, paper["b_D"])
    rows.append(dict(row="b", id="b", case=f"{SIZE}x{SIZE}, pad {PAD}, psize {PSIZE}: {len(B_SIGMAS)} sigma "
                     f"{min(B_SIGMAS):g}-{max(B_SIGMAS):g} x {len(B_OFFSETS)} offsets",
                     compared="denoisedFromPatches (image part) vs PatchPrior", **e,
                     note=f"paper's canvas ring outside the image: max |.| {fmt(info['patches']['ring_max_abs'])}"))
    fixtures["b_patches"] = dict(clean=inputs["b_clean"], z=inputs["b_z"], sigmas=np.asarray(b["sigmas"]),
                                 offsets=np.asarray(b["offsets"]), D=paper["b_D"])

    # (c) one dps iteration (and ten, not a fixture)
    y = paper["c_y"]
    c_fix = dict(y=y, start=image_part(paper["c_states0"][0]))
    for k, case in enumerate(C_CASES):
        pinfo = info["dps"]["cases"][k]
        z_img = image_part(inputs[f"c_z{k}"])
        ours_c = ours_dps(nets["tiny"], y, pinfo["t_cur"], pinfo["t_cur"] / 2, case["iterations"], case["offsets"], z_img)
        states = image_part(paper[f"c_states{k}"])
        if k == 0:
            e0 = errors(ours_c[0], states[0])
            rows.append(dict(row="c", id="c_start", case=f"start clamp(pinv(y)), {VIEWS}-view CT, {SIZE}x{SIZE}",
                             compared="dps start vs sample_dps start", **e0, note="the canvas ring starts at 0"))
        e = errors(ours_c[-1], states[-1])
        label = (f"t = {pinfo['t_cur']:g}, {case['iterations']} inner iteration{'s' if case['iterations'] > 1 else ''}"
                 f"{'' if case['noise'] else ', zero noise'}")
        ring = pinfo["ring_max_abs"][-1]
        note = f"paper's canvas ring after: max |.| {fmt(ring)}"
        if case["iterations"] > 1:
            per = [errors(o, p)["max_abs"] for o, p in zip(ours_c, states)]
            band, inner = edge_split(ours_c[2], states[2])
            note += ("; max-abs per iteration " + ", ".join(fmt(v) for v in per[1:])
                     + f"; after the 2nd: {fmt(band)} within {PSIZE} px of the image edge, {fmt(inner)} inside")
            details["c_iterations"] = dict(max_abs=per, ring_max_abs=pinfo["ring_max_abs"], second_edge=band,
                                           second_inside=inner)
        rows.append(dict(row="c", id=f"c{k}", case=label, compared="state after (image part) vs sample_dps(dc_step='paper')",
                         **e, note=note))
        if k < C_FIXTURE_CASES:
            c_fix.update({f"z{k}": z_img, f"after{k}": states[-1], f"t{k}": np.asarray(pinfo["t_cur"]),
                          f"offsets{k}": np.asarray(case["offsets"]), f"ring{k}": np.asarray(ring)})
    fixtures["c_dps"] = c_fix
    details["c_width_patched"] = info["dps"]["measurement_cond_fn_width_patched"]

    # (d) operators
    d_fix = {}
    for size in D_SIZES:
        x = inputs[f"d_x{size}"]
        for pname, oname in PAPER_OPS.items():
            key = f"d_{pname}_{size}"
            pgeo = info["operators"][key]
            for variant, (label, options) in enumerate(OUR_VARIANTS[pname]):
                op = our_operator(oname, size, options)
                ours = ours_operator_outputs(op, x, paper[f"{key}_A"])
                layout = layout_differences(geometry_of(op), pgeo)
                for part, what in (("A", "sinogram A x"), ("AT", "A^T y"), ("pinv", "FBP")):
                    p = paper[f"{key}_{part}"]
                    e = errors(ours[part], p) if ours[part].shape == p.shape else dict(max_abs=math.nan, rel=math.nan,
                                                                                       ref_max=float(np.abs(p).max()))
                    s = scale_fit(ours[part], p) if ours[part].shape == p.shape else dict(scale=math.nan,
                                                                                          rel_after_scale=math.nan)
                    note = f"ours/paper scale {s['scale']:.6g}, rel. rest after it {fmt(s['rel_after_scale'])}"
                    if part == "A":
                        note += "; layout: " + ("same" if not layout else "; ".join(layout))
                    rows.append(dict(row="d", id=f"d_{pname}_{size}_{variant}_{part}",
                                     case=f"{pname} -> {oname} {label}, {size}x{size}, {VIEWS} views",
                                     compared=what, **e, **s, note=note))
            if size == D_FIXTURE_SIZE:
                d_fix.update({f"{pname}_{part}": paper[f"{key}_{part}"] for part in ("A", "AT", "pinv", "angles")})
            details[key] = pgeo
    d_fix["x"] = inputs[f"d_x{D_FIXTURE_SIZE}"]
    fixtures["d_operators"] = d_fix

    # (e) the README commands
    cmd = info["command"]
    out_dir = work / "ours_results"
    argv = [a.replace("{PKL}", spec["command"]["pickle"]).replace("{IMAGES}", str(work / "image_dir"))
            .replace("--outdir=results", f"--outdir={out_dir}") for a in README_RECON]
    ours_cfg = json.loads(run_cli("inverse_nodist.py", argv + ["--dry-run"], work, args.threads))
    recon = recon_rows(cmd, ours_cfg)
    run_cli("inverse_nodist.py", argv + ["--device", "cpu"], work, args.threads)
    (run_dir,) = out_dir.iterdir()
    y_ours = np.load(run_dir / "slice_025_measurement.npy")
    recon_ours = np.load(run_dir / "slice_025_recon.npy")
    n_same = sum(r["same"] for r in recon)
    rows.append(dict(row="e", id="e_recon_settings", case="inverse_nodist.py README command (48x48, 2 levels)",
                     compared=f"configuration: {n_same}/{len(recon)} settings the same", max_abs=math.nan, rel=math.nan,
                     ref_max=math.nan, note="; ".join(f"{r['setting']}: {r['paper']} vs {r['ours']}"
                                                      for r in recon if not r["same"]) or "all the same"))
    e = errors(y_ours.reshape(paper["e_y"].shape), paper["e_y"])
    rows.append(dict(row="e", id="e_y", case="inverse_nodist.py README command", compared="measurement y (noise 0)", **e,
                     note="deterministic"))
    from training.networks import position_grid
    e = errors(position_grid(SIZE + 2 * PAD, SIZE + 2 * PAD).numpy(), paper["e_latents_pos"])
    rows.append(dict(row="e", id="e_pos", case="inverse_nodist.py README command", compared="position channels of the canvas",
                     **e, note=f"(1, 2, {SIZE + 2 * PAD}, {SIZE + 2 * PAD}): the inference canvas in both"))
    rows.append(dict(row="e", id="e_recon", case="inverse_nodist.py README command", compared="reconstruction (stochastic)",
                     max_abs=math.nan, rel=math.nan, ref_max=math.nan,
                     note=f"both run to the end on the tiny random-weight network; not comparable (independent noise "
                          f"and grid offsets); finite: ours {bool(np.isfinite(recon_ours).all())}, the paper's main "
                          f"printed PSNR {', '.join(f'{v:.2f}' for v in cmd['psnr'])} dB"))
    ours_train = json.loads(run_cli("train.py", [a.replace("--data=mydata", f"--data={work / 'mydata'}")
                                                 for a in README_TRAIN] + ["-n"], work, args.threads))
    trows = train_rows(train_info["train"], ours_train)
    n_same = sum(r["same"] for r in trows)
    rows.append(dict(row="e", id="e_train_settings", case="train.py README command (dry run)",
                     compared=f"configuration: {n_same}/{len(trows)} settings the same", max_abs=math.nan,
                     rel=math.nan, ref_max=math.nan, note="; ".join(f"{r['setting']}: {r['paper']} vs {r['ours']}"
                                                                    for r in trows if not r["same"])))
    fixtures["e_commands"] = dict(y=paper["e_y"], image=np.round(test_image(SIZE)[0] * 255).astype(np.uint8),
                                  latents_pos=paper["e_latents_pos"])

    manifest = dict(
        command=f"python benchmarks/paper_equiv.py --paper {args.paper}",
        size=SIZE, pad=PAD, psize=PSIZE, views=VIEWS, zeta=ZETA, sigma_min=SIGMA_MIN,
        networks={k: v for k, v in details.items() if k.startswith("a_")},
        dps_cases=[dict(c, offsets=[list(o) for o in c["offsets"]]) for c in C_CASES[:C_FIXTURE_CASES]],
        dps_measurement_width_patched=details["c_width_patched"],
        operators={k: v for k, v in details.items() if k.startswith("d_")},
        paper_recon=dict(kwargs=cmd["kwargs"], pad=cmd["pad"], psize=cmd["psize"], problem=cmd["problem"],
                         views=cmd["views"], image_size=cmd["image_size"], argv=README_RECON),
        paper_train=dict(options=train_info["train"]["options"], defaults=train_info["train"]["defaults"],
                         seed_given=train_info["train"]["seed_given"], argv=README_TRAIN),
        measured={r["id"]: dict(max_abs=r["max_abs"], rel=r["rel"], ref_max=r["ref_max"], **{
            k: r[k] for k in ("scale", "rel_after_scale") if k in r}) for r in rows},
        patched=info["patched"],
    )
    seconds = time.time() - start
    table = markdown(rows)
    print(table)
    print(f"\n{seconds:.0f} s; work directory {work}")
    args.outdir.mkdir(parents=True, exist_ok=True)
    (args.outdir / "paper_equiv.md").write_text(
        f"# Equivalence with the paper's code\n\n`{manifest['command']}` ({seconds:.0f} s, CPU)\n\n{table}\n\n"
        + "## inverse_nodist.py README command: settings\n\n" + settings_table(recon)
        + "\n## train.py README command: settings\n\n" + settings_table(trows))
    (args.outdir / "paper_equiv.json").write_text(json.dumps(dict(rows=rows, recon_settings=recon,
                                                                  train_settings=trows, details=details,
                                                                  seconds=seconds, command=manifest["command"]),
                                                             indent=1, default=str))
    if not args.no_fixtures:
        args.fixtures.mkdir(parents=True, exist_ok=True)
        for name, arrays in fixtures.items():
            np.savez_compressed(args.fixtures / f"{name}.npz", **arrays)
        (args.fixtures / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def markdown(rows: list[dict]) -> str:
    lines = ["| row | case | compared | max abs | relative | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['case']} | {r['compared']} | "
                     f"{'-' if math.isnan(r['max_abs']) else fmt(r['max_abs'])} | "
                     f"{'-' if math.isnan(r['rel']) else fmt(r['rel'])} | {r['note']} |")
    return "\n".join(lines)


def settings_table(rows: list[dict]) -> str:
    lines = ["| setting | paper | ours | same | note |", "|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['paper']} | {r['ours']} | {'yes' if r['same'] else '**no**'} | {r['note']} |"
              for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
