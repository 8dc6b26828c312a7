"""Property tests: random bytes and byte mutations (flip / truncate / insert) of valid
.pkl / .safetensors / .json files fed to every loader. Each call either returns a network
(or snapshot) or raises one of the intended clear errors, quickly; nothing else.
Training states (``training_loop._load_state``, the --resume loader) get the same treatment."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torch_utils.persistence import CheckpointError, load_network, load_snapshot, save_network, save_pickle
from training.networks import build_network
from training.patch_loss import PatchEDMLoss

from edm_fixtures import PAPER_TINY_KWARGS, no_side_effect, paper_network, write_paper_pickle  # isort: skip

ALLOWED = (CheckpointError, FileNotFoundError)
FUZZ = settings(max_examples=60, deadline=10000, derandomize=True,  # deadline: "no hang", on a busy machine
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class _Files(dict):
    def __repr__(self) -> str:  # keep hypothesis' reports short
        return f"<valid files {sorted(self)}>"


@pytest.fixture(scope="module")
def valid_files():
    """A small network saved in every format, plus a scratch directory."""
    torch.manual_seed(0)
    net = build_network("tiny", 16, 1, model_channels=8)
    root = Path(tempfile.mkdtemp(prefix="padis-fuzz-"))
    save_network(net, root / "net.safetensors")
    save_pickle(root / "net.pkl", dict(ema=net, loss_fn=PatchEDMLoss(), augment_pipe=None,
                                       dataset_kwargs=dict(path="/data")))
    write_paper_pickle(root / "paper.pkl", paper_network(PAPER_TINY_KWARGS), root / "marker")
    files = _Files((name, (root / name).read_bytes())
                   for name in ("net.safetensors", "net.json", "net.pkl", "paper.pkl"))
    yield root, files
    shutil.rmtree(root, ignore_errors=True)


def _try(loader, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = loader(path)
        except ALLOWED as exc:
            assert "\n" not in str(exc), str(exc)
            return
    assert isinstance(result, (torch.nn.Module, dict))


def _mutate(data: bytes, op: str, pos: int, value: int, length: int) -> bytes:
    pos %= len(data) + 1
    if op == "flip":
        pos = min(pos, len(data) - 1)
        return data[:pos] + bytes([data[pos] ^ (value or 1)]) + data[pos + 1:]
    if op == "truncate":
        return data[:pos]
    if op == "insert":
        return data[:pos] + bytes([value]) * length + data[pos:]
    return data[:pos] + data[pos + length:]  # delete


# Mutations cluster near the start (headers, pickle opcodes) but may hit anywhere.
MUTATION = st.tuples(st.sampled_from(["flip", "truncate", "insert", "delete"]),
                     st.one_of(st.integers(0, 4096), st.integers(0, 2 ** 31)),
                     st.integers(0, 255), st.integers(1, 16))


def _write(root: Path, name: str, data: bytes, companions: dict[str, bytes] = ()) -> Path:
    case = Path(tempfile.mkdtemp(dir=root))
    for other, content in dict(companions).items():
        (case / other).write_bytes(content)
    (case / name).write_bytes(data)
    return case / name


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".pkl", ".safetensors", ".json"]))
def test_random_bytes(valid_files, data, suffix):
    root, _ = valid_files
    path = _write(root, "net" + suffix, data)
    _try(load_network, path)
    if suffix == ".pkl":
        _try(load_snapshot, path)


@pytest.mark.parametrize("name", ["net.pkl", "paper.pkl"])
@FUZZ
@given(mutation=MUTATION)
def test_mutated_pickle(valid_files, name, mutation):
    """Mutations of our pickle and of one in the paper's layout (whose module_src would leave a marker file)."""
    root, files = valid_files
    path = _write(root, name, _mutate(files[name], *mutation))
    _try(load_network, path)
    _try(load_snapshot, path)
    no_side_effect(root / "marker")


@FUZZ
@given(mutation=MUTATION, with_json=st.booleans())
def test_mutated_safetensors(valid_files, mutation, with_json):
    root, files = valid_files
    path = _write(root, "net.safetensors", _mutate(files["net.safetensors"], *mutation),
                  {"net.json": files["net.json"]} if with_json else {})
    _try(load_network, path)


@FUZZ
@given(mutation=MUTATION)
def test_mutated_json(valid_files, mutation):
    root, files = valid_files
    path = _write(root, "net.json", _mutate(files["net.json"], *mutation),
                  {"net.safetensors": files["net.safetensors"]})
    _try(load_network, path)
    _try(load_network, path.with_suffix(".safetensors"))


@pytest.fixture(scope="module")
def valid_state(tmp_path_factory):
    """A small training state in the layout training.training_loop writes (torch.save, zip)."""
    torch.manual_seed(0)
    net = build_network("tiny", 16, 1, model_channels=8)
    opt = torch.optim.Adam(net.parameters())
    root = tmp_path_factory.mktemp("state-fuzz")
    path = root / "training-state-000001.pt"
    torch.save(dict(net=net.state_dict(), ema=net.state_dict(), optimizer=opt.state_dict(), step=1, nimg=4,
                    tick=0, tick_start_nimg=0, nonfinite_total=0,
                    rng=dict(size=torch.Generator().get_state(), data=[], cpu=[], cuda=[])), path)
    return root, path.read_bytes()


def _try_state(path: Path) -> None:
    from training.training_loop import _load_state

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            state = _load_state(path)
        except ValueError as exc:
            assert "\n" not in str(exc) and path.name in str(exc), str(exc)
            return
    assert isinstance(state, dict) and {"net", "ema", "optimizer", "step", "nimg", "rng"} <= set(state)


@FUZZ
@given(data=st.binary(max_size=2048))
def test_training_state_random_bytes(valid_state, data):
    root, _ = valid_state
    _try_state(_write(root, "training-state-000002.pt", data))


@FUZZ
@given(mutation=MUTATION)
def test_training_state_mutated(valid_state, mutation):
    root, data = valid_state
    _try_state(_write(root, "training-state-000002.pt", _mutate(data, *mutation)))
