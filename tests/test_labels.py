"""Names and units a user reads: the pseudo-inverse outside CT, the training length's unit."""

from __future__ import annotations

from click.testing import CliRunner

import train
from inverse.baselines import method_label
from inverse.cli import parse_baselines


def test_fbp_is_called_pinv_outside_ct():
    assert method_label("fbp", "ct_fanbeam") == "fbp" and method_label("fbp", "ct_lact") == "fbp"
    for problem in ("deblur_uniform", "deblur_gauss", "super", "inpaint", "denoise"):
        assert method_label("fbp", problem) == "pinv"
    assert method_label("tv", "super") == "tv"
    assert parse_baselines(None, None, "pinv,tv") == ["fbp", "tv"]


def test_training_units_name_what_is_counted():
    res = CliRunner().invoke(train.main, ["-h"], terminal_width=200)
    assert res.exit_code == 0
    help_text = " ".join(res.output.split())
    assert "--duration FLOAT RANGE Training length, Mimg: millions of training patches" in help_text
    assert "Stats interval, kimg (thousands of training patches)" in help_text
