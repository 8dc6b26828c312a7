"""Convert a network checkpoint into padis' safetensors + JSON, once, so a downloaded pickle
never has to be unpickled again:

    python -m torch_utils.convert network-snapshot-000800.pkl ct.safetensors

Input: anything ``load_network`` reads (EDM-layout pickles such as the paper's published
``network-snapshot-*.pkl``, our pickles, our safetensors). The pickle is read by the safe
loader (no code from the file runs). Output: ``OUT.safetensors`` (weights, class name and
constructor kwargs in its metadata) and ``OUT.json`` beside it; ``extra`` in the JSON records
the source file's name and sha256 and, for pickles, the snapshot's ``dataset_kwargs`` and loss
object, so nothing the pickle said is lost. Both files are written atomically and never
overwrite anything (an existing output is an error). Default OUT: IN with ``.safetensors``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import click
import torch

from torch_utils import persistence


def _load(path: Path) -> tuple[torch.nn.Module, dict]:
    """(network, extra): a pickle is read once with ``load_snapshot``; its ``dataset_kwargs``
    and loss object (as plain data) go into ``extra``."""
    if path.suffix.lower() not in persistence.PICKLE_SUFFIXES:
        return persistence.load_network(path), {}
    snap = persistence.load_snapshot(path)
    net = snap.get("ema")
    if not isinstance(net, torch.nn.Module):
        raise persistence.CheckpointError(f"{path}: no 'ema' network in the pickle (keys: "
                                          f"{', '.join(map(str, list(snap)[:8])) or 'none'})")
    extra = {}
    if isinstance(snap.get("dataset_kwargs"), dict):
        extra["dataset_kwargs"] = dict(snap["dataset_kwargs"])
    loss = snap.get("loss_fn")
    if isinstance(loss, dict) and "class_name" in loss:
        extra["loss_fn"] = dict(class_name=loss["class_name"], init_kwargs=loss.get("init_kwargs", {}),
                                state={k: v for k, v in loss.get("state", {}).items()
                                       if isinstance(v, (bool, int, float, str, type(None)))})
    return net, extra


def convert(src: str | os.PathLike, dst: str | os.PathLike | None = None) -> Path:
    """Load ``src`` safely and write it as ``dst`` (``*.safetensors``) + ``.json``; returns
    ``dst``. Refuses before reading anything if either output file exists."""
    src = Path(src)
    dst = Path(dst) if dst is not None else src.with_suffix(".safetensors")
    if dst.suffix != ".safetensors":
        raise ValueError(f"output {dst} must end with .safetensors")
    if src.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"output {dst} is the input file; give another OUT")
    for p in (dst, dst.with_suffix(".json")):
        if p.exists():
            raise FileExistsError(f"{p} already exists; refusing to overwrite it")
    net, extra = _load(src)
    extra = dict(converted_from=src.name, source_sha256=hashlib.sha256(src.read_bytes()).hexdigest(), **extra)
    return persistence.save_network(net, dst, extra=extra)


@click.command(context_settings=dict(help_option_names=["-h", "--help"]))
@click.argument("src", metavar="IN", type=click.Path(dir_okay=False))
@click.argument("dst", metavar="[OUT]", required=False, type=click.Path(dir_okay=False))
@click.option("--debug", is_flag=True, help="Show tracebacks")
def main(src: str, dst: str | None, debug: bool) -> None:
    """Convert checkpoint IN (.pkl/.safetensors/.json) to OUT.safetensors + OUT.json
    [default OUT: IN with .safetensors]. Never overwrites; no code from IN is run."""
    try:
        out = convert(src, dst)
    except Exception as exc:
        if debug:
            raise
        raise click.ClickException(str(exc) or type(exc).__name__) from None
    net = persistence.load_network(out)
    count = sum(p.numel() for p in net.parameters())
    click.echo(f"wrote {out} and {out.with_suffix('.json').name}: {type(net).__name__}, {count:,} parameters "
               f"(load with --network {out})")


if __name__ == "__main__":
    main()
