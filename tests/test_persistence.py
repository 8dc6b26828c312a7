"""torch_utils.persistence: safetensors + JSON and EDM-layout pickles; the safe loader never
runs code from a file (checked with marker files that a hostile payload would create)."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import io
import json
import math
import os
import pickle
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from dnnlib.util import EasyDict
from torch_utils import persistence
from torch_utils.persistence import CheckpointError, load_network, load_snapshot, save_network, save_pickle
from torch_utils.safe_unpickler import SafeUnpickler
from training.networks import EDMPrecond, PatchEDMPrecond, build_network
from training.patch_loss import PatchEDMLoss

from edm_fixtures import (  # isort: skip  (tests/ helper module)
    PAPER_DATASET_KWARGS,
    PAPER_SIZE_KWARGS,
    PAPER_TINY_KWARGS,
    no_side_effect,
    paper_network,
    write_paper_pickle,
)


def _probe(net: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 1, 8, 8, generator=g)
    pos = torch.rand(2, 2, 8, 8, generator=g) * 2 - 1
    with torch.no_grad():
        return net(x, torch.tensor([0.2, 3.0]), pos)


def _assert_same_net(loaded: torch.nn.Module, ref: torch.nn.Module, outputs: bool = False) -> None:
    """Same class, eval mode, frozen, identical tensors; with ``outputs`` also identical outputs."""
    assert type(loaded) is type(ref)
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    ref_state, state = ref.state_dict(), loaded.state_dict()
    assert list(state) == list(ref_state)
    assert all(torch.equal(state[k], ref_state[k]) for k in ref_state)
    if outputs:
        assert torch.equal(_probe(loaded), _probe(ref))


# ----------------------------------------------------------------------------------------
# Pickles in the layout of the paper's own train.py (tests/edm_fixtures.py), with module_src
# payloads that leave marker files if executed.


@pytest.fixture(scope="module")
def paper_net():
    """Our network for the kwargs of a real (small) paper pickle."""
    return paper_network(PAPER_TINY_KWARGS)


def _write_edm_pickle(path, net, marker, top_kwargs=PAPER_TINY_KWARGS) -> bytes:
    return write_paper_pickle(path, net, marker, top_kwargs=top_kwargs)


_no_side_effect = no_side_effect


class _RecordingUnpickler(SafeUnpickler):
    def __init__(self, file, source):
        super().__init__(file, source)
        self.seen = set()

    def find_class(self, module, name):
        self.seen.add(f"{module}.{name}")
        return super().find_class(module, name)


def _globals_of(data: bytes) -> set[str]:
    u = _RecordingUnpickler(io.BytesIO(data), "x.pkl")
    u.load()
    return u.seen


# ----------------------------------------------------------------------------------------
# safetensors + JSON


def test_safetensors_round_trip(tmp_path, tiny_patch_net):
    path = save_network(tiny_patch_net, tmp_path / "net.safetensors", extra={"step": 12, "kimg": 0.5})
    assert path == tmp_path / "net.safetensors"
    record = json.loads((tmp_path / "net.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert record["class_name"] == "PatchEDMPrecond"
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["num_parameters"] == sum(p.numel() for p in tiny_patch_net.parameters())
    assert record["extra"] == {"step": 12, "kimg": 0.5}
    for p in (path, tmp_path / "net.json"):
        net = load_network(p)
        _assert_same_net(net, tiny_patch_net, outputs=p.suffix == ".json")
        assert net.init_kwargs == tiny_patch_net.init_kwargs | {"resample_filter": [1, 1],
                                                               "channel_mult": [1, 2], "attn_resolutions": []}
        assert net.init_kwargs["sigma_max"] == math.inf
    assert persistence.network_summary(net)["num_parameters"] == record["num_parameters"]


def test_safetensors_metadata_alone_suffices(tmp_path, tiny_patch_net):
    path = save_network(tiny_patch_net, tmp_path / "net.safetensors")
    (tmp_path / "net.json").unlink()
    _assert_same_net(load_network(path, expected_sha256=hashlib.sha256(path.read_bytes()).hexdigest()),
                     tiny_patch_net)


def test_save_never_overwrites(tmp_path, tiny_patch_net):
    save_network(tiny_patch_net, tmp_path / "net.safetensors")
    with pytest.raises(FileExistsError, match="net.safetensors"):
        save_network(tiny_patch_net, tmp_path / "net.safetensors")
    save_network(tiny_patch_net, tmp_path / "net.safetensors", overwrite=True)
    save_pickle(tmp_path / "net.pkl", dict(ema=tiny_patch_net))
    with pytest.raises(FileExistsError, match="net.pkl"):
        save_pickle(tmp_path / "net.pkl", dict(ema=tiny_patch_net))
    with pytest.raises(ValueError, match="safetensors"):
        save_network(tiny_patch_net, tmp_path / "net.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.json", "net.pkl", "net.safetensors"]


@pytest.mark.parametrize("value", [math.inf, -math.inf, 0.1 + 0.2, 1e-300, 5e-324, 2.0 ** 60 + 1])
def test_json_floats_round_trip_exactly(value):
    text = persistence.dumps_json({"v": value, "nested": [value, {"w": value}]})
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    back = persistence.loads_json(text)
    assert back["v"] == value and back["nested"][1]["w"] == value and type(back["v"]) is type(value)
    assert math.isnan(persistence.loads_json(persistence.dumps_json(math.nan)))


def test_sha256_mismatch(tmp_path, tiny_patch_net):
    path = save_network(tiny_patch_net, tmp_path / "net.safetensors")
    with pytest.raises(CheckpointError, match=r"net\.safetensors has sha256 .* expected sha256"):
        load_network(path, expected_sha256="0" * 64)
    record = json.loads((tmp_path / "net.json").read_text())
    record["sha256"] = "f" * 64
    (tmp_path / "net.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"net\.safetensors has sha256 .*recorded in .*net\.json"):
        load_network(path)
    save_pickle(tmp_path / "net.pkl", dict(ema=tiny_patch_net))
    with pytest.raises(CheckpointError, match=r"net\.pkl has sha256"):
        load_network(tmp_path / "net.pkl", expected_sha256="0" * 64)


@pytest.mark.parametrize("damage", ["truncate", "header", "empty"])
def test_corrupt_safetensors(tmp_path, tiny_patch_net, damage):
    path = save_network(tiny_patch_net, tmp_path / "net.safetensors")
    data = path.read_bytes()
    data = {"truncate": data[:-100], "header": data[:20] + b"\x00" + data[21:], "empty": b""}[damage]
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=r"net\.safetensors") as with_json:
        load_network(path)
    (tmp_path / "net.json").unlink()
    with pytest.raises(CheckpointError, match=r"net\.safetensors (is not a valid safetensors|is empty)") as alone:
        load_network(path)
    for exc in (with_json, alone):
        assert "\n" not in str(exc.value)


def test_json_that_does_not_match_the_weights(tmp_path, tiny_patch_net):
    path = save_network(tiny_patch_net, tmp_path / "net.safetensors")
    record = json.loads((tmp_path / "net.json").read_text())
    record["init_kwargs"]["model_channels"] = 32
    (tmp_path / "net.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"net\.json does not match the weights in .*net\.safetensors"):
        load_network(path)
    (tmp_path / "net.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"net\.json is not valid JSON"):
        load_network(tmp_path / "net.json")


def test_another_architecture(tmp_path, tiny_patch_net):
    small = build_network("small", 32, 1)
    meta = {"class_name": "PatchEDMPrecond", "init_kwargs": persistence.dumps_json(small.init_kwargs)}
    path = tmp_path / "other.safetensors"
    safetensors.torch.save_file(tiny_patch_net.state_dict(), path, metadata=meta)
    with pytest.raises(CheckpointError, match=r"network in .*other\.safetensors does not match the architecture "
                                              r"its kwargs describe: missing .*, unexpected .*"):
        load_network(path)
    # The same for a pickle whose kwargs describe a wider network than its tensors.
    kwargs = PAPER_TINY_KWARGS | {"model_channels": 32}
    _write_edm_pickle(tmp_path / "other.pkl", paper_network(PAPER_TINY_KWARGS), tmp_path / "marker",
                      top_kwargs=kwargs)
    with pytest.raises(CheckpointError, match=r"does not match the architecture .*wrong shape"):
        load_network(tmp_path / "other.pkl")
    _no_side_effect(tmp_path / "marker")


def test_unknown_kwargs(tmp_path, tiny_patch_net):
    def write(extra):
        meta = {"class_name": "PatchEDMPrecond",
                "init_kwargs": persistence.dumps_json(tiny_patch_net.init_kwargs | extra)}
        path = tmp_path / "net.safetensors"
        safetensors.torch.save_file(tiny_patch_net.state_dict(), path, metadata=meta)
        return path

    with pytest.warns(UserWarning, match="fancy"):
        _assert_same_net(load_network(write({"fancy": None, "other": 0})), tiny_patch_net)
    with pytest.raises(CheckpointError, match=r"constructor kwargs \{'fancy': 3\} of PatchEDMPrecond are not "
                                              r"supported by padis' implementation"):
        load_network(write({"fancy": 3}))
    # The paper's inert kwargs: accepted (silently) at the one value its code uses, else refused.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = load_network(write({"hash_channels": 1, "four_channels": 1}))
    _assert_same_net(net, tiny_patch_net)
    assert "hash_channels" not in net.init_kwargs
    for kwarg, value in (("hash_channels", 16), ("hash_channels", 0), ("four_channels", 2),
                         ("hash_channels", True), ("four_channels", 1.5)):
        with pytest.raises(CheckpointError) as exc:
            load_network(write({kwarg: value}))
        assert str(exc.value) == (f"{tmp_path / 'net.safetensors'}: constructor kwarg {kwarg}={value!r} of "
                                  f"PatchEDMPrecond is not supported; padis supports only {kwarg}=1 (the value "
                                  "the paper's code always uses)")


@pytest.mark.parametrize("absurd", [{"num_blocks": 2 ** 31}, {"model_channels": 2 ** 40},
                                    {"channel_mult": [1] * 5000}])
def test_absurd_kwargs_fail_fast(tmp_path, tiny_patch_net, absurd):
    meta = {"class_name": "PatchEDMPrecond", "init_kwargs": persistence.dumps_json(tiny_patch_net.init_kwargs | absurd)}
    safetensors.torch.save_file(tiny_patch_net.state_dict(), tmp_path / "net.safetensors", metadata=meta)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"net\.safetensors(: cannot build| does not match the architecture)"):
        load_network(tmp_path / "net.safetensors")
    assert time.perf_counter() - start < 10


def test_missing_empty_and_foreign_files(tmp_path):
    for name in ("none.pkl", "none.safetensors", "none.json"):
        with pytest.raises(FileNotFoundError, match=name):
            load_network(tmp_path / name)
    (tmp_path / "empty.pkl").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pkl is empty"):
        load_network(tmp_path / "empty.pkl")
    (tmp_path / "text.pkl").write_text("this is not a pickle at all\n")
    with pytest.raises(CheckpointError, match=r"text\.pkl is not a readable network pickle"):
        load_network(tmp_path / "text.pkl")
    (tmp_path / "net.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        load_network(tmp_path / "net.onnx")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointError, match="not a pickled network"):
        load_network(tmp_path / "list.pkl")
    (tmp_path / "noema.pkl").write_bytes(pickle.dumps({"net": 1}))
    with pytest.raises(CheckpointError, match="no 'ema'"):
        load_network(tmp_path / "noema.pkl")


# ----------------------------------------------------------------------------------------
# Pickles


def test_pickle_round_trip(tmp_path, tiny_patch_net):
    loss = PatchEDMLoss(P_mean=-1.0, pad_width=8)
    path = save_pickle(tmp_path / "network-snapshot-000001.pkl",
                       dict(ema=tiny_patch_net, loss_fn=loss, augment_pipe=None,
                            dataset_kwargs=EasyDict(path="/data", resolution=32)))
    data = path.read_bytes()
    assert _globals_of(data) == {"torch_utils.persistence._reconstruct_persistent_obj",
                                 "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                                 "torch.storage._load_from_bytes", "torch.nn.modules.container.ModuleDict",
                                 "collections.OrderedDict", "dnnlib.util.EasyDict"}
    # (No numpy globals: UNetBlock.skip_scale is a Python float in our modules; the published
    # pickles' numpy scalars are covered by the EDM-layout loading tests.)
    _assert_same_net(load_network(path), tiny_patch_net, outputs=True)
    snap = load_snapshot(path)
    assert set(snap) == {"ema", "loss_fn", "augment_pipe", "dataset_kwargs"}
    _assert_same_net(snap["ema"], tiny_patch_net)
    assert snap["loss_fn"].class_name == "PatchEDMLoss"
    assert snap["loss_fn"].init_kwargs == dict(P_mean=-1.0, P_std=1.2, sigma_data=0.5, pad_width=8)
    assert snap["augment_pipe"] is None
    assert snap["dataset_kwargs"] == {"path": "/data", "resolution": 32}
    assert isinstance(snap["dataset_kwargs"], EasyDict)


def test_plain_pickle_never_runs_embedded_code(tmp_path, tiny_patch_net):
    save_pickle(tmp_path / "net.pkl", dict(ema=tiny_patch_net))
    with pytest.raises(CheckpointError, match="load_network"):
        pickle.loads((tmp_path / "net.pkl").read_bytes())
    marker = tmp_path / "marker"
    _write_edm_pickle(tmp_path / "edm.pkl", paper_network(PAPER_TINY_KWARGS), marker)
    with pytest.raises(CheckpointError, match="load_network"):
        pickle.loads((tmp_path / "edm.pkl").read_bytes())
    _no_side_effect(marker)


def test_edm_family_tool_loads_our_pickle(tmp_path, tiny_patch_net):
    """An EDM-style loader that executes module_src (as EDM's persistence does) rebuilds a
    working network from our pickle: module_src is self-contained."""
    modules = {}

    def edm_reconstruct(meta):
        assert meta["type"] == "class" and meta["version"] == 6
        if meta["module_src"] not in modules:
            module = types.ModuleType(f"_edm_imported_{len(modules)}")
            exec(compile(meta["module_src"], module.__name__, "exec"), module.__dict__)  # trusted: our own file
            modules[meta["module_src"]] = module
        obj = modules[meta["module_src"]].__dict__[meta["class_name"]].__new__(
            modules[meta["module_src"]].__dict__[meta["class_name"]])
        obj.__setstate__(meta["state"]) if hasattr(obj, "__setstate__") else obj.__dict__.update(meta["state"])
        return obj

    class EDMUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("torch_utils.persistence", "_reconstruct_persistent_obj"):
                return edm_reconstruct
            return super().find_class(module, name)

    save_pickle(tmp_path / "net.pkl", dict(ema=tiny_patch_net, loss_fn=PatchEDMLoss()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snap = EDMUnpickler(io.BytesIO((tmp_path / "net.pkl").read_bytes())).load()
    net = snap["ema"]
    assert type(net).__name__ == "PatchEDMPrecond" and type(net) is not type(tiny_patch_net)
    assert net._init_kwargs == tiny_patch_net.init_kwargs
    assert torch.equal(_probe(net.eval()), _probe(tiny_patch_net))
    assert snap["loss_fn"].P_mean == PatchEDMLoss().P_mean
    # Executing module_src registered nothing: our loader still rebuilds our own classes.
    assert persistence.loadable_networks() == {"EDMPrecond": EDMPrecond, "PatchEDMPrecond": PatchEDMPrecond,
                                               "Patch_EDMPrecond": PatchEDMPrecond}
    assert type(load_network(tmp_path / "net.pkl")) is PatchEDMPrecond


REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints" / "ct_head_small.safetensors"


def _fresh_python(code: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -c code args`` in a new interpreter that finds this checkout's modules."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def _summary(net: torch.nn.Module) -> str:
    return f"{type(net).__name__} {sum(p.numel() for p in net.parameters())} " \
           f"{float(sum(p.double().sum() for p in net.parameters())):.12g}"


_FRESH_LOAD = ("from torch_utils.persistence import load_network\n"
               "import sys\n"
               "before = sorted(m for m in sys.modules if m.split('.')[0] in ('training', 'inverse'))\n"
               "net = load_network(sys.argv[1])\n"
               "print(before, type(net).__name__, sum(p.numel() for p in net.parameters()),\n"
               "      format(float(sum(p.double().sum() for p in net.parameters())), '.12g'))\n")


@pytest.mark.parametrize("kind", ["shipped safetensors", "shipped json", "paper pickle", "our EDMPrecond pickle"])
def test_load_network_in_a_fresh_interpreter(kind, tmp_path):
    """``from torch_utils.persistence import load_network; load_network(path)`` needs no other
    import: the network classes come from the entry-point group padis.networks (torch_utils
    itself imports nothing of training until a file is loaded)."""
    marker = tmp_path / "marker"
    if kind == "shipped safetensors":
        path = SHIPPED
    elif kind == "shipped json":
        path = SHIPPED.with_suffix(".json")
    elif kind == "paper pickle":
        path = tmp_path / "network-snapshot-000800.pkl"
        write_paper_pickle(path, paper_network(PAPER_TINY_KWARGS), marker)
    else:
        torch.manual_seed(0)
        path = tmp_path / "network-snapshot-000001.pkl"
        save_pickle(path, dict(ema=build_network("tiny", img_resolution=16, image_channels=1, positional=False)))
    res = _fresh_python(_FRESH_LOAD, tmp_path, str(path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[] " + _summary(load_network(path))
    no_side_effect(marker)


def test_fresh_interpreter_without_package_metadata_reads_the_checkout(tmp_path):
    """A checkout that is not pip-installed has no entry-point metadata: the declarations of
    its pyproject.toml are used (here the installed metadata is hidden)."""
    path = tmp_path / "network-snapshot-000800.pkl"
    write_paper_pickle(path, paper_network(PAPER_TINY_KWARGS), tmp_path / "marker")
    code = ("import importlib.metadata as md\n"
            "md.entry_points = lambda **kw: md.EntryPoints(())\n" + _FRESH_LOAD)
    res = _fresh_python(code, tmp_path, str(path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[] " + _summary(load_network(path))


def test_convert_in_a_fresh_interpreter(tmp_path):
    """python -m torch_utils.convert on the paper's pickle imports nothing by hand."""
    src = tmp_path / "network-snapshot-000800.pkl"
    write_paper_pickle(src, paper_network(PAPER_TINY_KWARGS), tmp_path / "marker")
    res = _fresh_python("import runpy; runpy.run_module('torch_utils.convert', run_name='__main__')", tmp_path,
                        str(src), str(tmp_path / "ct.safetensors"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "wrote" in res.stdout and "PatchEDMPrecond" in res.stdout
    assert _summary(load_network(tmp_path / "ct.safetensors")) == _summary(load_network(src))


def test_installed_metadata_declares_the_checkout_networks():
    """The pip-installed metadata lists what pyproject.toml declares (an install older than a
    new entry point would not: pip install -e . again; make test does when pyproject.toml changed)."""
    try:
        dist = importlib.metadata.distribution(persistence.PROJECT_NAME)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("padis is not pip-installed; the checkout's pyproject.toml is read instead")
    installed = {(ep.name, ep.value) for ep in dist.entry_points if ep.group == persistence.ENTRY_POINT_GROUP}
    declared = {(ep.name, ep.value) for ep in persistence.checkout_entry_points(REPO / "pyproject.toml")}
    assert declared == {("EDMPrecond", "training.networks:EDMPrecond"),
                        ("PatchEDMPrecond", "training.networks:PatchEDMPrecond")}
    assert installed == declared, "the installed padis metadata is stale: run pip install -e . (or make test)"


def test_checkout_entry_points(tmp_path):
    toml = tmp_path / "pyproject.toml"
    assert persistence.checkout_entry_points(tmp_path / "missing.toml") == []
    toml.write_text('[project]\nname = "other"\n[project.entry-points."padis.networks"]\nX = "a:B"\n')
    assert persistence.checkout_entry_points(toml) == []
    toml.write_text('[project]\nname = "padis"\n[project.entry-points."padis.networks"]\nX = "a:B"\n'
                    '[project.entry-points.other]\nY = "c:D"\n')
    assert [(ep.name, ep.value, ep.group) for ep in persistence.checkout_entry_points(toml)] == [
        ("X", "a:B", "padis.networks")]
    toml.write_text('[project]\nname = "padis"\n')
    assert persistence.checkout_entry_points(toml) == []
    toml.write_text('[project]\nname = "padis"\n[project.entry-points."padis.networks"]\nX = 3\n')
    with pytest.raises(ValueError, match=r"pyproject.toml: .*must map names to 'module:Class' strings"):
        persistence.checkout_entry_points(toml)
    toml.write_text("[project\n")
    with pytest.raises(ValueError, match=r"pyproject.toml: not a readable TOML file"):
        persistence.checkout_entry_points(toml)


def _fresh_registry(monkeypatch, entry_points: list, pyproject: Path) -> None:
    """The loader's registry as in a new process that sees ``entry_points`` installed and
    ``pyproject`` as the checkout's."""
    monkeypatch.setattr(persistence, "_NETWORKS", {})
    monkeypatch.setattr(persistence, "_declared_loaded", False)
    monkeypatch.setattr(persistence, "_declaration_problems", [])
    monkeypatch.setattr(persistence, "_PYPROJECT", pyproject)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: importlib.metadata.EntryPoints(entry_points))


def test_broken_entry_points_are_named_and_do_not_block_the_others(tmp_path, monkeypatch, tiny_patch_net):
    save_network(tiny_patch_net, tmp_path / "net.safetensors")
    broken = [importlib.metadata.EntryPoint("Gone", "padis_no_such_module:Net", persistence.ENTRY_POINT_GROUP),
              importlib.metadata.EntryPoint("Dict", "collections:OrderedDict", persistence.ENTRY_POINT_GROUP)]
    _fresh_registry(monkeypatch, broken, REPO / "pyproject.toml")
    assert type(load_network(tmp_path / "net.safetensors")) is PatchEDMPrecond
    assert sorted(persistence.loadable_networks()) == ["EDMPrecond", "PatchEDMPrecond", "Patch_EDMPrecond"]

    _fresh_registry(monkeypatch, broken, tmp_path / "no-checkout" / "pyproject.toml")
    with pytest.raises(CheckpointError) as info:
        load_network(tmp_path / "net.safetensors")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'net.json'}: network class 'PatchEDMPrecond'")
    assert "is not one of [] (no network class is declared in the entry-point group 'padis.networks'" in message
    assert "entry point Gone = 'padis_no_such_module:Net' does not import: ModuleNotFoundError" in message
    assert ("entry point Dict = 'collections:OrderedDict' is not a network class registered with "
            "@persistent_class and loadable_names") in message


def _paper_probe(net: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    x, pos = torch.rand(2, 1, 16, 16, generator=g), torch.rand(2, 2, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        return net(x, torch.tensor([0.2, 3.0]), pos)


class _MetaUnpickler(pickle.Unpickler):
    """Our own fixture read back as stored: each persistent object becomes its meta dict
    (module_src is not run)."""

    def find_class(self, module, name):
        if name == "_reconstruct_persistent_obj":
            return lambda meta: meta
        return super().find_class(module, name)


def test_paper_pickle_loads_without_running_its_source(tmp_path, paper_net):
    """A pickle in the exact layout of the paper's train.py (its stored kwargs, hash_channels
    included; Patch_EDMLoss; augment_pipe None; plain-dict dataset_kwargs)."""
    marker = tmp_path / "marker"
    path = tmp_path / "network-snapshot-002000.pkl"
    data = _write_edm_pickle(path, paper_net, marker)
    assert b"module_src was executed" in data and b"Patch_EDMPrecond" in data and b"Patch_EDMLoss" in data
    assert {"torch.storage._load_from_bytes", "numpy._core.multiarray.scalar", "numpy.dtype",
            "torch.nn.modules.container.ModuleDict"} <= _globals_of(data)
    stored = _MetaUnpickler(io.BytesIO(data)).load()
    assert stored["ema"]["state"]["_init_kwargs"] == PAPER_TINY_KWARGS
    assert list(stored["ema"]["state"]["_init_kwargs"]) == list(PAPER_TINY_KWARGS)
    assert stored["loss_fn"]["class_name"] == "Patch_EDMLoss" and stored["loss_fn"]["state"]["_init_kwargs"] == {}
    block = stored["ema"]["state"]["_modules"]["model"]["state"]["_modules"]["enc"]._modules["32x32_down"]
    assert block["state"]["_init_kwargs"]["down"] is True  # submodules carry their own constructor kwargs

    net = load_network(path)
    _assert_same_net(net, paper_net)
    assert torch.equal(_paper_probe(net), _paper_probe(paper_net))
    assert net.init_kwargs == {k: v for k, v in PAPER_TINY_KWARGS.items() if k != "hash_channels"} | dict(
        sigma_min=0, sigma_max=math.inf, sigma_data=0.5)
    snap = load_snapshot(path)
    assert set(snap) == {"ema", "loss_fn", "augment_pipe", "dataset_kwargs"}
    _assert_same_net(snap["ema"], paper_net)
    assert snap["loss_fn"].class_name == "Patch_EDMLoss" and snap["loss_fn"].init_kwargs == {}
    assert snap["loss_fn"].state == dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5)
    assert snap["augment_pipe"] is None
    assert snap["dataset_kwargs"] == PAPER_DATASET_KWARGS and type(snap["dataset_kwargs"]) is dict
    _no_side_effect(marker)


def test_paper_size_pickle_loads(tmp_path):
    """The published CT prior's configuration (model_channels 128, channel_mult [2,2,2], 4 blocks,
    img_resolution 384; 54.4 M parameters). Built on the meta device with one-element storages,
    so the file is small; the loader rebuilds it in full."""
    big = paper_network(PAPER_SIZE_KWARGS, meta=True)
    marker = tmp_path / "marker"
    data = _write_edm_pickle(tmp_path / "network-snapshot-000800.pkl", big, marker, top_kwargs=PAPER_SIZE_KWARGS)
    assert len(data) < 2 ** 21
    net = load_network(tmp_path / "network-snapshot-000800.pkl")
    assert sum(p.numel() for p in net.parameters()) == 54_409_729
    state, ref = net.state_dict(), big.state_dict()
    assert list(state) == list(ref) and all(torch.equal(state[k], ref[k]) for k in ref)
    # img_resolution 384: levels 384/192/96, attn_resolutions [16] matches none; the one attention
    # block is the decoder's first at the lowest level (docs/ARCHITECTURE.md).
    assert sorted({k.split(".")[2] for k in state if ".qkv." in k}) == ["96x96_in0"]
    _no_side_effect(marker)


# ----------------------------------------------------------------------------------------
# Hostile pickles: refused, and the command never runs.


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _hostile(kind: str, marker) -> tuple[bytes, str]:
    """(pickle bytes, the global it references first) for one kind of attack."""
    cmd = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').write('x')"
    if kind == "os.system":  # hand-written protocol-0 stream naming os.system directly
        return b"cos\nsystem\n(S'" + cmd.encode() + b"'\ntR.", "os.system"
    if kind == "builtins.exec":
        return b"cbuiltins\nexec\n(S\"" + code.encode() + b"\"\ntR.", "builtins.exec"
    fn, args = {
        "posix.system": (os.system, (cmd,)),  # a __reduce__ that calls posix.system
        "builtins.eval": (eval, (code,)),
        "builtins.getattr": (getattr, ("abc", "upper")),
        "builtins.__import__": (__import__, ("os",)),
        "subprocess.Popen": (subprocess.Popen, (["touch", str(marker)],)),
        "functools.partial": (functools.partial(os.system, cmd), ()),
        "torch.load": (torch.load, (str(marker),)),
        "numpy.load": (np.load, (str(marker),)),
    }[kind]
    name = "functools.partial" if kind == "functools.partial" else f"{fn.__module__}.{fn.__qualname__}"
    return pickle.dumps({"ema": _Reduce(fn, args), "loss_fn": None}, protocol=4), name


HOSTILE = ["os.system", "builtins.exec", "posix.system", "builtins.eval", "builtins.getattr",
           "builtins.__import__", "subprocess.Popen", "functools.partial", "torch.load", "numpy.load"]


@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("loader", [load_network, load_snapshot])
def test_hostile_pickles_are_refused(tmp_path, kind, loader):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pkl"
    data, name = _hostile(kind, marker)
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as exc:
        loader(path)
    assert str(exc.value) == (f"refusing to load {path}: it references {name}, "
                              "which is not allowed in a network pickle")
    _no_side_effect(marker)


@pytest.mark.parametrize("loader", [load_network, load_snapshot])
def test_hostile_storage_bytes_get_a_weights_only_load(tmp_path, loader):
    """A _load_from_bytes payload whose inner pickle calls os.system (torch's own
    _load_from_bytes would run it with weights_only=False)."""
    marker = tmp_path / "marker"
    inner = io.BytesIO()
    torch.save(_Reduce(os.system, (f"touch {marker}",)), inner, _use_new_zipfile_serialization=False)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": _Reduce(torch.storage._load_from_bytes, (inner.getvalue(),))}))
    with pytest.raises(CheckpointError, match=r"evil\.pkl is not a readable network pickle: .*weights-only"):
        loader(path)
    _no_side_effect(marker)


def test_reconstruct_meta_is_validated(tmp_path):
    path = tmp_path / "odd.pkl"
    path.write_bytes(pickle.dumps({"ema": _Reduce(persistence._reconstruct_persistent_obj,
                                                  ({"type": "function", "class_name": "x"},))}))
    with pytest.raises(CheckpointError, match=r"odd\.pkl is not a readable network pickle"):
        load_network(path)
    path.write_bytes(pickle.dumps({"ema": _Reduce(persistence._reconstruct_persistent_obj, (
        {"type": "class", "version": 6, "class_name": "SongUNet", "module_src": "", "state": {}},))}))
    with pytest.raises(CheckpointError, match=r"odd\.pkl: the pickled SongUNet has no constructor"):
        load_network(path)


def test_pickle_that_would_exhaust_memory_is_refused_fast(tmp_path):
    """The C unpickler sizes its memo table by the largest memo index (LONG_BINPUT 2**31-1
    would ask for 16 GiB); a pre-scan refuses such indices and over-long length fields."""
    path = tmp_path / "memo.pkl"
    for data in (b"\x80\x04N" + b"r\xff\xff\xff\x7f" + b".",  # NONE, LONG_BINPUT 2**31-1, STOP
                 b"\x80\x04\x8e" + (2 ** 40).to_bytes(8, "little") + b"abc."):  # BINBYTES8 of 1 TiB
        path.write_bytes(data)
        start = time.perf_counter()
        with pytest.raises(CheckpointError, match=r"memo\.pkl is not a readable network pickle"):
            load_network(path)
        assert time.perf_counter() - start < 2


def test_device_round_trip(tmp_path, tiny_patch_net, device):
    """Saving a network that lives on ``device`` writes CPU tensors; loading puts it on ``device``."""
    net = build_network("tiny", 32, 1).to(device)
    net.load_state_dict(tiny_patch_net.state_dict())
    save_pickle(tmp_path / "net.pkl", dict(ema=net))
    save_network(net, tmp_path / "net.safetensors")
    for name in ("net.pkl", "net.safetensors"):
        loaded = load_network(tmp_path / name, device=device)
        assert {t.device for t in loaded.state_dict().values()} == {torch.device(device.type, 0) if
                                                                    device.type == "cuda" else device}
        _assert_same_net(loaded.cpu(), tiny_patch_net)


def test_implicit_mlp_stem_pickles(tmp_path):
    """Patch-Diffusion's implicit_mlp stem holds torch.nn.Sequential and SiLU modules; they
    are read as inert records too."""
    torch.manual_seed(1)
    net = build_network("tiny", 32, 1, implicit_mlp=True).eval()
    data = save_pickle(tmp_path / "net.pkl", dict(ema=net)).read_bytes()
    assert {"torch.nn.modules.container.Sequential", "torch.nn.modules.activation.SiLU"} <= _globals_of(data)
    _assert_same_net(load_network(tmp_path / "net.pkl"), net, outputs=True)
