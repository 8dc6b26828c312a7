"""torch_utils.misc.result_file: benchmarks write into a new run directory unless --out names a file."""

from __future__ import annotations

from torch_utils import misc


def test_result_file_is_new_run_dir_unless_named(tmp_path):
    first = misc.result_file(None, "bench_x", tmp_path / "out")
    second = misc.result_file(None, "bench_x", tmp_path / "out")
    assert first == tmp_path / "out" / "00000-bench_x" / "bench_x.json" and first.parent.is_dir()
    assert second == tmp_path / "out" / "00001-bench_x" / "bench_x.json"
    named = misc.result_file(tmp_path / "results" / "b.json", "bench_x")
    assert named == tmp_path / "results" / "b.json" and named.parent.is_dir()
