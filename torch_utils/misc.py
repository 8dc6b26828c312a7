"""Run directories and atomic file writes shared by training and reconstruction.

Nothing is ever overwritten: every run gets a fresh ``OUTDIR/NNNNN-<desc>/`` directory, and
every file is written under a temporary name in the same directory, flushed to disk, then
renamed into place, so a killed process leaves either the old state or the complete new file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

_RUN_RE = re.compile(r"^(\d{5})-")
_UMASK = os.umask(0)
os.umask(_UMASK)


def check_writable(outdir: str | os.PathLike) -> Path:
    """Create ``outdir`` if needed and prove we can write there (before any work is done)."""
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=outdir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OSError(f"output directory {outdir} is not writable: {exc.strerror or exc}") from None
    return outdir


def new_run_dir(outdir: str | os.PathLike, desc: str) -> Path:
    """Make ``outdir/NNNNN-desc`` with NNNNN one above the largest existing run id.

    Uses an exclusive ``mkdir`` so two processes never share a directory.
    """
    outdir = check_writable(outdir)
    desc = re.sub(r"[^A-Za-z0-9._=-]+", "_", desc).strip("_") or "run"
    while True:
        ids = [int(m.group(1)) for p in outdir.iterdir() if (m := _RUN_RE.match(p.name))]
        run_dir = outdir / f"{max(ids, default=-1) + 1:05d}-{desc}"
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    With ``overwrite=False`` an existing ``path`` is an error (FileExistsError), checked both
    before and at the rename (``os.link`` is used so a concurrent writer cannot be clobbered).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual mode
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"{path} already exists; refusing to overwrite it") from None
            tmp.unlink()
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def atomic_write_json(path: str | os.PathLike, obj: Any, overwrite: bool = False) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n", overwrite=overwrite)


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Call ``writer(tmp_path)`` (e.g. ``torch.save``/``np.save``/``Image.save``), then rename."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        writer(tmp)
    return Path(path)
