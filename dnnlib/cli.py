"""What every command-line tool (train.py, inverse_nodist.py, generate.py) does with a failure:
one ``Error: ...`` line, exit code 1, the library's parameter names spelled as the tool's flags.
"""

from __future__ import annotations

import os
import re
import sys
from typing import NoReturn

import click


def run_or_fail(fn, cfg, debug: bool):
    """Call ``fn(cfg)``; any failure becomes one ``Error: ...`` line and exit code 1 (the
    traceback only with ``debug``), the parameter names in it spelled as the running command's
    flags (:func:`to_flags`)."""
    try:
        return fn(cfg)
    except Exception as exc:
        if debug:
            raise
        fail(to_flags(str(exc) or type(exc).__name__))


def fail(message: str) -> NoReturn:
    """Stop with ``Error: message`` and exit status 1. Under torchrun (WORLD_SIZE > 1) only
    rank 0 prints it; the ranks then meet (:func:`_meet`, if their group is still up) and all
    leave at once with status 1 (``os._exit``: no interpreter teardown); a rank the launcher
    SIGTERMs meanwhile also exits with 1. Otherwise a ClickException."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        raise click.ClickException(message)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: os._exit(1))  # the launcher stopping a rank: still status 1
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"Error: {message}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    _meet()
    os._exit(1)


def _meet(timeout_s: float = 60.0) -> bool:
    """Wait until every rank of the torch.distributed group gets here, so that all ranks stop
    together; gloo waits at most ``timeout_s`` seconds. False if a rank did not come or there
    is no group. (dnnlib is the lowest layer: it uses torch.distributed itself, not
    torch_utils.distributed.)"""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    try:
        if dist.get_backend() == "gloo":
            from datetime import timedelta
            dist.monitored_barrier(timeout=timedelta(seconds=timeout_s), wait_all_ranks=True)
        else:
            dist.barrier()
    except RuntimeError:
        return False
    return True


def to_flags(message: str, ctx: click.Context | None = None) -> str:
    """Library errors name parameters (``image_size``, ``resume=DIR``); a command-line user
    knows them as flags: ``name=`` and every ``snake_case`` name of an option of the running
    command (``ctx``, default the current one) become its flag (``--image-size``)."""
    ctx = ctx or click.get_current_context(silent=True)
    if ctx is None:
        return message
    for param in ctx.command.params:
        flags = [o for o in getattr(param, "opts", []) if o.startswith("--")]
        if not flags:
            continue
        name = flags[0][2:].replace("-", "_")
        message = re.sub(rf"(?<![\w-]){name}=", flags[0] + " ", message)
        if "_" in name:
            message = re.sub(rf"(?<![\w-]){name}\b", flags[0], message)
    return message
