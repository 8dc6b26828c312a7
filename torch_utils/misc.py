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
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

RUN_DIR_RE = re.compile(r"^(\d{5})-")  # OUTDIR/NNNNN-<desc>: group 1 is the run number
_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")  # atomic_path's ".NAME.<random>.tmp"
# Test hook (used by the kill-and-resume tests): "GLOB:SECONDS" makes atomic_path sleep after the
# content of a file whose name matches GLOB is written to its temporary name, before the rename,
# so a test can kill the process while the temporary file exists.
WRITE_DELAY_ENV = "PADIS_TEST_WRITE_DELAY"
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


def clean_desc(desc: str) -> str:
    """The run-directory suffix that :func:`new_run_dir` makes of ``desc``."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", desc).strip("_") or "run"


def timed(fn: Callable[[], Any], device) -> tuple[Any, float]:
    """(fn(), seconds it took); on CUDA the device is synchronised before and after."""
    import torch
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def result_file(out: str | os.PathLike | None, name: str, outdir: str | os.PathLike = "out") -> Path:
    """Where a benchmark writes its JSON: ``out`` if given (the file named, e.g. the committed
    one under benchmarks/results/, replaced on purpose), else ``NAME.json`` in a new run
    directory ``OUTDIR/NNNNN-NAME/``."""
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        return Path(out)
    return new_run_dir(outdir, name) / f"{name}.json"


def new_run_dir(outdir: str | os.PathLike, desc: str) -> Path:
    """Make ``outdir/NNNNN-desc`` with NNNNN one above the largest existing run id.

    Uses an exclusive ``mkdir`` so two processes never share a directory.
    """
    outdir = check_writable(outdir)
    desc = clean_desc(desc)
    while True:
        ids = [int(m.group(1)) for p in outdir.iterdir() if (m := RUN_DIR_RE.match(p.name))]
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
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_error(path, exc) from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        except OSError as exc:  # e.g. ENOSPC: one line that names the file
            raise _write_error(path, exc) from None
        _test_write_delay(path.name)
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


def _write_error(path: Path, exc: OSError) -> OSError:
    if isinstance(exc, FileExistsError):
        return exc
    return OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}")


def _test_write_delay(name: str) -> None:
    hook = os.environ.get(WRITE_DELAY_ENV)
    if hook:
        pattern, _, seconds = hook.rpartition(":")
        if Path(name).match(pattern):
            time.sleep(float(seconds))


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed ``atomic_path`` left in ``directory`` (their final
    names were never created). Only for directories no live process is writing to (resume)."""
    removed = []
    for p in sorted(Path(directory).iterdir()):
        if p.is_file() and _TEMP_RE.match(p.name):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


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


CPUINFO = "/proc/cpuinfo"  # where bf16_cpu_warning reads the CPU's instruction flags (Linux)
# cpuinfo key -> flags that mean native bf16 arithmetic: x86 lists them under 'flags'
# (AVX512-BF16, AMX-BF16), aarch64 under 'Features' ('bf16', ARMv8.6 BFDOT/BFMMLA).
NATIVE_BF16_FLAGS = {"flags": ("avx512_bf16", "amx_bf16"), "features": ("bf16",)}


def bf16_cpu_warning(precision: str, device, cpuinfo: str | None = None,
                     path: str | os.PathLike | None = None) -> str | None:
    """One line to warn with when ``precision`` bf16 runs on a CPU ``device`` that lacks native
    bf16, else None. Without it autocast emulates bf16 and the network runs 20x or more slower
    than in fp32 (an AMD EPYC without AVX-512: one paper-size call over 10 minutes, 26 s in fp32).

    ``cpuinfo`` is the text of ``path`` (default :data:`CPUINFO`, read when ``cpuinfo`` is None).
    A CPU is native when a ``flags``/``Features`` line names one of :data:`NATIVE_BF16_FLAGS`.
    If no such line can be read (no file: not Linux; unreadable; no flags listed) the answer is
    unknown and the warning says bf16 *may* be slow: a wrong "may" costs one line, a missing
    warning can cost hours. Not a refusal: bf16 still runs. The text names the parameter as
    ``precision=bf16`` (a CLI spells it ``--precision bf16`` through ``dnnlib.cli.to_flags``)."""
    if precision != "bf16" or str(device).split(":")[0] != "cpu":
        return None
    path = Path(path if path is not None else CPUINFO)
    if cpuinfo is None:
        try:
            cpuinfo = path.read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    listed, native = False, False
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        wanted = NATIVE_BF16_FLAGS.get(key.strip().lower())
        if sep and wanted is not None:
            listed = True
            native = native or any(f in value.split() for f in wanted)
    slow = "autocast then emulates bf16, often 20x or more slower than fp32; precision=fp32 is faster there"
    if not listed:
        return f"precision=bf16 on device {device}: cannot tell whether this CPU has native bf16 (no CPU flags in {path}); {slow}"
    if native:
        return None
    return (f"precision=bf16 on device {device}: this CPU has no native bf16 (no avx512_bf16 or amx_bf16 "
            f"flag, aarch64: bf16, in {path}); {slow}")
