"""The paper's side of benchmarks/paper_equiv.py: runs the paper's own code, on CPU, in this process.

    python benchmarks/paper_equiv_child.py --checkout /path/to/PaDIS --work DIR

It copies the checkout to ``DIR/paper`` and patches the copy for CPU (:data:`TEXT_PATCHES`: CUDA
devices, ASTRA's CUDA projector and NCCL become their CPU counterparts), then imports the copy's
modules (never padis'; the two share package names such as ``training``) with stand-ins for the
packages it imports but never uses here (:data:`STUB_MODULES`) and ODL 1.0's ``odl.applications.tomo``
under the old name ``odl.tomo`` (and ODL elements convertible to arrays again, as before 1.0). It reads ``DIR/spec.json`` and ``DIR/inputs.npz`` (written by
benchmarks/paper_equiv.py), runs the tasks of the spec and writes ``DIR/paper.npz`` (tensors) and
``DIR/paper.json`` (configurations, notes); the network pickles go to ``DIR/pickles/``.

Nothing of the paper's code lives in this file: it calls the paper's functions and records what
they compute. Importing this module has no side effects; the tests import
:func:`fill_parameters` from it (the weights of the compared networks are a seeded function of
the parameter names, so a test can rebuild them without any pickle).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
import pickle
import random
import re
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import torch

# Text replacements applied to every .py file of the copy: the paper's code hard-codes CUDA.
TEXT_PATCHES = [
    (r"torch\.device\(\s*['\"]cuda(:0)?['\"]\s*\)", "torch.device('cpu')"),
    (r"\.cuda\(\)", ".cpu()"),
    (r"['\"]astra_cuda['\"]", "'astra_cpu'"),
    (r"['\"]nccl['\"]", "'gloo'"),
]
# Imported by the paper's modules, unused by what runs here, not installed in padis' environment.
STUB_MODULES = {"diffusers": dict(AutoencoderKL=None), "wandb": {}, "psutil": {}, "requests": {}}


class Stop(Exception):
    """Raised by a recording hook to leave the paper's loop once the wanted state is captured."""


def fill_parameters(module: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter with seeded values that depend only on the sorted parameter
    names and shapes (so padis' network, whose names are the paper's, gets the same weights):
    weights of rank >= 2 ~ N(0, 1/fan_in), 1-D ``*weight`` ~ 1 + N(0, 0.1²), other 1-D ~ N(0, 0.1²).
    A fresh EDM SongUNet's output layers start at 1e-5 scale (it returns about c_skip x); this makes every
    layer count."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            z = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if p.dim() >= 2:
                value = z / math.sqrt(p[0].numel())
            elif name.endswith("weight"):
                value = 1 + 0.1 * z
            else:
                value = 0.1 * z
            p.copy_(value.to(p.dtype))


# ----------------------------------------------------------------------------------------
# Setting up the paper's code


def prepare_copy(checkout: Path, dest: Path) -> list[str]:
    """Copy ``checkout`` to ``dest`` and apply :data:`TEXT_PATCHES`; returns 'file: n replacements' lines."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(checkout, dest, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pkl", "*.pt"))
    report = []
    for path in sorted(dest.rglob("*.py")):
        text = path.read_text()
        total = 0
        for pattern, repl in TEXT_PATCHES:
            text, n = re.subn(pattern, repl, text)
            total += n
        if total:
            path.write_text(text)
            report.append(f"{path.relative_to(dest)}: {total}")
    return report


def install(copy_dir: Path) -> None:
    """Make the copy importable ahead of anything else (padis' editable install included)."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "") + repr(f)]
    for sub in ("training", "odlstuff"):  # the paper appends its own absolute paths of these
        sys.path.insert(0, str(copy_dir / sub))
    sys.path.insert(0, str(copy_dir))
    for name, attrs in STUB_MODULES.items():
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__dict__.update(attrs)
            sys.modules[name] = mod
    import odl
    from odl.applications import tomo
    odl.tomo = tomo
    sys.modules["odl.tomo"] = tomo
    # ODL 1.0 refuses np.asarray(element) (the paper's OperatorFunction relies on it): give
    # elements back their old conversion to their array.
    from odl.core.set.space import LinearSpaceElement
    LinearSpaceElement.__array__ = lambda self, dtype=None, copy=None: np.asarray(self.data, dtype=dtype)
    torch.cuda.set_device = lambda *a, **k: None  # dist.init calls it
    global PAPER_DIR
    PAPER_DIR = copy_dir
    for mod in ("training", "dnnlib", "torch_utils"):
        paper_module(mod)


PAPER_DIR: Path | None = None  # the patched copy, once installed


def paper_module(name: str) -> types.ModuleType:
    """A module of the paper's copy (never padis', whose packages have the same names)."""
    import importlib
    module = importlib.import_module(name)
    if PAPER_DIR is None or not str(module.__file__).startswith(str(PAPER_DIR)):
        raise RuntimeError(f"{name} is not the paper's module: {module.__file__}")
    return module


# ----------------------------------------------------------------------------------------
# Tasks. Each takes (spec, inputs, out) and puts tensors into ``out`` (dict name -> array) and
# returns a JSON-able dict.


def task_network(spec: dict, inputs, out: dict, work: Path) -> dict:
    """(a) The paper's Patch_EDMPrecond, constructed as its training loop constructs it (the
    class name and kwargs of its train.py), weights from :func:`fill_parameters`, pickled as its
    training loop pickles a snapshot; its denoiser on the inputs."""
    dnnlib = paper_module("dnnlib")
    info = {}
    (work / "pickles").mkdir(exist_ok=True)
    nets = {}
    for cfg in spec["networks"]:
        name = cfg["name"]
        kwargs = dict(class_name="training.networks.Patch_EDMPrecond", **cfg["network_kwargs"],
                      **cfg["interface_kwargs"])
        net = dnnlib.util.construct_class_by_name(**kwargs)
        fill_parameters(net, cfg["seed"])
        net.eval().requires_grad_(False)
        loss_fn = dnnlib.util.construct_class_by_name(class_name="training.patch_loss.Patch_EDMLoss")
        data = dict(ema=net, loss_fn=loss_fn, augment_pipe=None, dataset_kwargs=dict(cfg["dataset_kwargs"]))
        for key, value in data.items():
            if isinstance(value, torch.nn.Module):
                data[key] = copy.deepcopy(value).eval().requires_grad_(False).cpu()
        path = work / "pickles" / f"network-snapshot-{name}.pkl"
        with open(path, "wb") as f:
            pickle.dump(data, f)
        x, sigma, pos = (torch.from_numpy(inputs[f"a_{name}_{k}"]) for k in ("x", "sigma", "pos"))
        with torch.no_grad():
            out[f"a_{name}_D"] = net(x, sigma, pos).numpy()
        info[name] = dict(pickle=str(path), parameters=sum(p.numel() for p in net.parameters()),
                          init_kwargs=dict(net.init_kwargs),
                          parameter_names=[n for n, _ in sorted(net.named_parameters())])
        nets[name] = net
    return dict(networks=info, _nets=nets)


def _fixed_indices(denoise_padding, spaced, patches, pad, psize, offset):
    """The paper's getIndices with its two random.randint draws answered by ``offset`` (a, b)."""
    answers = list(offset)
    original = random.randint
    random.randint = lambda lo, hi: answers.pop(0)
    try:
        return denoise_padding.getIndices(spaced, patches, pad, psize)
    finally:
        random.randint = original


@contextlib.contextmanager
def measurement_width(inverse_nodist, w: int):
    """The paper's measurement_cond_fn slices x0hat[:, pad:pad+w] with w defaulting to 256 (its
    dps does not pass w): the image at 256 x 256 only. While active that default is ``w``;
    yields whether it had to change."""
    defaults = inverse_nodist.measurement_cond_fn.__defaults__
    inverse_nodist.measurement_cond_fn.__defaults__ = (*defaults[:-1], w)
    try:
        yield w != defaults[-1]
    finally:
        inverse_nodist.measurement_cond_fn.__defaults__ = defaults


def run_paper_command(spec: dict, work: Path, hooks: dict) -> dict:
    """(e) The paper README's inverse_nodist.py command (tiny sizes) through the paper's main():
    records what main hands its dps (configuration, latents_pos, the measurement, the start
    clamp(Adagger(y))), then runs its dps as main does."""
    inverse_nodist = paper_module("inverse_nodist")
    seen = {}
    real_dps = inverse_nodist.dps

    def recorder(net, latents, latents_pos, inverseop, clean=None, noisy=None, pad=None, psize=None, **kwargs):
        seen.update(latents_pos=latents_pos.clone(), noisy=noisy.clone(), pad=pad, psize=psize,
                    latents_shape=list(latents.shape), kwargs={k: v for k, v in kwargs.items()},
                    x_init=torch.clamp(inverseop.Adagger(noisy), min=0, max=1).clone(),
                    problem=inverseop.name, views=inverseop.views, imsize=inverseop.imsize)
        if not spec["command"].get("run_dps", True):
            return torch.nn.functional.pad(seen["x_init"], (pad,) * 4)
        with measurement_width(inverse_nodist, inverseop.imsize) as patched:
            seen["width_patched"] = patched
            return real_dps(net, latents, latents_pos, inverseop, clean=clean, noisy=noisy, pad=pad, psize=psize,
                            **kwargs)

    real_figures = inverse_nodist.makeFigures
    inverse_nodist.dps = recorder
    inverse_nodist.makeFigures = lambda *a, **k: None  # it saves into the authors' own directory
    argv = [a.replace("{PKL}", spec["command"]["pickle"]).replace("{IMAGES}", str(work / "image_dir"))
            for a in spec["command"]["args"]]
    stdout = io.StringIO()
    old_cwd = os.getcwd()
    os.chdir(work)  # main writes proj.mat into the working directory
    try:
        with contextlib.redirect_stdout(stdout):
            inverse_nodist.main.main(args=argv, standalone_mode=False)
    finally:
        os.chdir(old_cwd)
        inverse_nodist.dps, inverse_nodist.makeFigures = real_dps, real_figures
    printed = stdout.getvalue()
    psnrs = [float(v) for v in re.findall(r"psnr for this image:\s+([-0-9.einf]+)", printed)]
    hooks["latents_pos"] = seen["latents_pos"]
    return dict(argv=argv, measurement_width_patched=seen.get("width_patched"), pad=seen["pad"], psize=seen["psize"], kwargs=seen["kwargs"], problem=seen["problem"],
                views=seen["views"], image_size=seen["imsize"], latents_shape=seen["latents_shape"],
                psnr=psnrs, _tensors=dict(e_y=seen["noisy"].numpy(), e_x_init=seen["x_init"].numpy(),
                                          e_latents_pos=seen["latents_pos"].numpy()))


def task_patches(spec: dict, inputs, out: dict, net, latents_pos) -> dict:
    """(b) The paper's denoisedFromPatches at fixed grid offsets on zero-padded noisy images."""
    denoise_padding = paper_module("denoise_padding")
    b = spec["patches"]
    pad, psize, w = b["pad"], b["psize"], b["image_size"]
    patches = w // psize + 1
    spaced = np.linspace(0, (patches - 1) * psize, patches, dtype=int)
    clean, z = torch.from_numpy(inputs["b_clean"]), torch.from_numpy(inputs["b_z"])
    outs, ring = [], []
    for sigma, offset in zip(b["sigmas"], b["offsets"]):
        x = torch.nn.functional.pad(clean + sigma * z, (pad,) * 4)[None]  # (1, C, N, N): the paper's canvas
        indices = _fixed_indices(denoise_padding, spaced, patches, pad, psize, offset)
        with torch.no_grad():
            d = denoise_padding.denoisedFromPatches(net, x, torch.tensor(sigma, dtype=torch.float64), latents_pos,
                                                    None, indices, t_goal=0, wrong=False)
        outs.append(d[0, :, pad:pad + w, pad:pad + w].numpy())
        inner = torch.zeros_like(d, dtype=torch.bool)
        inner[..., pad:pad + w, pad:pad + w] = True
        ring.append(float(d[~inner].abs().max()))
    out["b_D"] = np.stack(outs)
    return dict(ring_max_abs=max(ring))


def task_dps(spec: dict, inputs, out: dict, net, latents_pos) -> dict:
    """(c) The paper's dps from its own start (clamp(Adagger(y)) on the zero-padded canvas):
    the state after its first inner iteration (and, for the 'run' case, after every inner
    iteration of the first level), with the Langevin noise z injected through its randn_like
    argument and the grid offsets fixed through its getIndices' random draws."""
    denoise_padding, inverse_nodist = paper_module("denoise_padding"), paper_module("inverse_nodist")
    InverseOperator = paper_module("inverse_operators").InverseOperator
    c = spec["dps"]
    w = c["image_size"]
    op = InverseOperator(w, c["problem"], views=c["views"])
    y = op.A(torch.from_numpy(inputs["c_clean"]))
    out["c_y"] = y.numpy()
    info = dict(cases=[])
    with measurement_width(inverse_nodist, w) as patched:
        info["measurement_cond_fn_width_patched"] = patched
        _dps_cases(c, inputs, out, net, latents_pos, op, y, info, denoise_padding, inverse_nodist)
    return info


def _dps_cases(c, inputs, out, net, latents_pos, op, y, info, denoise_padding, inverse_nodist) -> None:
    w, pad, psize = c["image_size"], c["pad"], c["psize"]
    real_denoise, real_indices, real_figures = (inverse_nodist.denoisedFromPatches, inverse_nodist.getIndices,
                                                inverse_nodist.makeFigures)
    try:
        for k, case in enumerate(c["cases"]):
            states, denoised, times, offsets = [], [], [], list(map(tuple, case["offsets"]))
            noise = iter(torch.from_numpy(inputs[f"c_z{k}"]))
            stop_after = case["iterations"]

            def denoise(net_, x, t, *args, **kwargs):
                states.append(x[0].detach().clone())
                times.append(float(t))
                if len(states) > stop_after:
                    raise Stop
                d = real_denoise(net_, x, t, *args, **kwargs)
                denoised.append(d[0].detach().clone())
                return d

            def indices(spaced_, patches_, pad_, psize_, freezeindex=False):
                return _fixed_indices(denoise_padding, spaced_, patches_, pad_, psize_, offsets[len(states) % len(offsets)])

            inverse_nodist.denoisedFromPatches, inverse_nodist.getIndices = denoise, indices
            inverse_nodist.makeFigures = lambda *a, **k: None
            latents = torch.zeros([1, 1, w, w])
            try:
                inverse_nodist.dps(net, latents, latents_pos, op, noisy=y, randn_like=lambda x: next(noise).reshape(x.shape),
                                   num_steps=case["num_steps"], sigma_min=c["sigma_min"], sigma_max=case["sigma_max"],
                                   zeta=c["zeta"], pad=pad, psize=psize)
            except Stop:
                pass
            out[f"c_states{k}"] = torch.stack(states).numpy()  # (iterations + 1, C, N, N): canvas before each
            inner = torch.zeros_like(states[0], dtype=torch.bool)
            inner[..., pad:pad + w, pad:pad + w] = True
            info["cases"].append(dict(t_cur=times[0], t_levels=times,
                                      ring_max_abs=[float(s[~inner].abs().max()) for s in states]))
    finally:
        inverse_nodist.denoisedFromPatches, inverse_nodist.getIndices = real_denoise, real_indices
        inverse_nodist.makeFigures = real_figures


def task_operators(spec: dict, inputs, out: dict) -> dict:
    """(d) The paper's InverseOperator (parbeam/fanbeam, lact) for each size: A x, AT y with
    y = A x, Adagger y (FBP), and the ODL geometry it builds."""
    InverseOperator = paper_module("inverse_operators").InverseOperator
    info = {}
    for size in spec["operators"]["sizes"]:
        x = torch.from_numpy(inputs[f"d_x{size}"])
        for name in spec["operators"]["names"]:
            op = InverseOperator(size, name, views=spec["operators"]["views"])
            y = op.A(x)
            key = f"d_{name}_{size}"
            out[f"{key}_A"] = y.numpy()
            out[f"{key}_AT"] = op.AT(y).numpy()
            out[f"{key}_pinv"] = op.Adagger(y).numpy()
            geom = op.radon_sv.geometry
            space = op.radon_sv.reco_space
            out[f"{key}_angles"] = np.asarray(geom.angles, dtype=np.float64)
            info[key] = dict(
                geometry=type(geom).__name__, angle_min=float(geom.motion_partition.min_pt[0]),
                angle_max=float(geom.motion_partition.max_pt[0]), views=int(geom.motion_partition.shape[0]),
                det_min=float(geom.det_partition.min_pt[0]), det_max=float(geom.det_partition.max_pt[0]),
                det_count=int(geom.det_partition.shape[0]), space_min=[float(v) for v in space.min_pt],
                space_max=[float(v) for v in space.max_pt], shape=list(space.shape),
                src_radius=float(getattr(geom, "src_radius", 0.0)), det_radius=float(getattr(geom, "det_radius", 0.0)),
                fbp_freq=float(op.radon_sv.Adagger.__defaults__[1]))
    return info


def task_train_command(spec: dict, work: Path) -> dict:
    """(e) The paper README's train.py command through the paper's main() with --dry-run: the
    configuration it prints (its 'Training options' JSON)."""
    train = paper_module("train")
    os.environ.setdefault("MASTER_PORT", str(spec["train"]["master_port"]))
    stdout = io.StringIO()
    old_cwd = os.getcwd()
    os.chdir(work)
    try:
        with contextlib.redirect_stdout(stdout):
            train.main.main(args=spec["train"]["args"] + ["--dry-run"], standalone_mode=False)
    finally:
        os.chdir(old_cwd)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    text = stdout.getvalue()
    start = text.index("Training options:") + len("Training options:")
    options, _ = json.JSONDecoder().raw_decode(text[start:].lstrip())
    # What the dry run does not print: the defaults its training loop, SongUNet and loss take.
    import inspect

    networks, patch_loss = paper_module("training.networks"), paper_module("training.patch_loss")
    training_loop = paper_module("training.training_loop")

    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items()
                if p.default is not inspect.Parameter.empty and k not in ("device",)}

    def init_of(cls):  # a persistent class's __init__ wraps the decorated class's (its base)
        return (cls.__bases__[0] if hasattr(cls, "_orig_class_name") else cls).__init__
    return dict(options=options, printed=text.splitlines()[-12:],
                seed_given=any(a.startswith("--seed") for a in spec["train"]["args"]),
                defaults=dict(training_loop=defaults(training_loop.training_loop),
                              SongUNet=defaults(init_of(networks.SongUNet)),
                              Patch_EDMLoss=defaults(init_of(patch_loss.Patch_EDMLoss))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--tasks", default="command,network,patches,dps,operators")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("PADIS_EQUIV_THREADS", "1")))
    spec = json.loads((args.work / "spec.json").read_text())
    inputs = dict(np.load(args.work / "inputs.npz"))
    copy_dir = args.work / "paper"
    patched = prepare_copy(args.checkout, copy_dir)
    install(copy_dir)
    tasks = args.tasks.split(",")
    out: dict[str, np.ndarray] = {}
    info: dict = dict(patched=patched, tasks=tasks)
    hooks: dict = {}
    if "network" in tasks:
        res = task_network(spec, inputs, out, args.work)
        hooks["nets"] = res.pop("_nets")
        info["network"] = res
    if "command" in tasks:
        res = run_paper_command(spec, args.work, hooks)
        out.update(res.pop("_tensors"))
        info["command"] = res
    net = hooks.get("nets", {}).get(spec.get("patch_network", "tiny"))
    if "patches" in tasks:
        info["patches"] = task_patches(spec, inputs, out, net, hooks["latents_pos"])
    if "dps" in tasks:
        info["dps"] = task_dps(spec, inputs, out, net, hooks["latents_pos"])
    if "operators" in tasks:
        info["operators"] = task_operators(spec, inputs, out)
    if "train" in tasks:
        info["train"] = task_train_command(spec, args.work)
    suffix = "" if tasks != ["train"] else "_train"
    np.savez(args.work / f"paper{suffix}.npz", **out)
    (args.work / f"paper{suffix}.json").write_text(json.dumps(info, indent=1, default=str))


if __name__ == "__main__":
    main()
