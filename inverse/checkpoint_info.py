"""What a checkpoint records about its training, and what that says about a reconstruction.

Our snapshots (``torch_utils.persistence.save_network``) keep the training run's facts under
``extra`` in the JSON beside the weights: ``patch_sizes`` (e.g. ``["16", "32", "64"]`` or
``["whole"]``), ``pad_width`` and ``dataset_kwargs.resolution`` ([H, W] of the training
images). Pickles of the paper's code carry none of this: :func:`training_info` is then ``{}``
and the checks below stay silent.
"""

from __future__ import annotations

import json
from pathlib import Path

WHOLE = "whole"  # training.patch_loss.WHOLE: the whole padded canvas as one patch


def training_info(path: str | Path) -> dict:
    """The ``extra`` dict of the JSON record of a ``.safetensors``/``.json`` checkpoint, or
    ``{}`` (pickles, no JSON beside the weights, an unreadable record: load_network reports
    those)."""
    path = Path(path)
    record = path if path.suffix.lower() == ".json" else path.with_suffix(".json")
    if path.suffix.lower() not in (".json", ".safetensors") or not record.is_file():
        return {}
    try:
        extra = json.loads(record.read_text()).get("extra")
    except (OSError, ValueError, AttributeError):
        return {}
    return extra if isinstance(extra, dict) else {}


def trained_resolution(info: dict) -> tuple[int, int] | None:
    res = (info.get("dataset_kwargs") or {}).get("resolution")
    return (int(res[0]), int(res[1])) if isinstance(res, (list, tuple)) and len(res) == 2 else None


def is_whole_image_network(info: dict) -> bool:
    """True when the network was trained on whole images only (``--patch-sizes whole``)."""
    return [str(s) for s in info.get("patch_sizes") or []] == [WHOLE]


def trained_patch_range(info: dict) -> tuple[int, int] | None:
    """(smallest, largest) trained patch side in pixels, or None when not recorded. A 'whole'
    entry beside integer sizes counts as the padded canvas of the training images."""
    sizes = [str(s) for s in info.get("patch_sizes") or []]
    ints = [int(s) for s in sizes if s.isdigit()]
    if WHOLE in sizes:
        res = trained_resolution(info)
        if res is not None:
            ints.append(max(res) + 2 * int(info.get("pad_width") or 0))
    return (min(ints), max(ints)) if ints else None


def prior_problem(info: dict, prior: str) -> str | None:
    """A reason why ``prior`` cannot use this network (for an error), or None."""
    if prior in ("patch", "average") and is_whole_image_network(info):
        return (f"this is a whole-image network (trained with patch_sizes ['whole']); prior '{prior}' "
                "needs a patch network: use prior 'whole' (--prior whole)")
    return None


def default_prior(info: dict) -> tuple[str, str | None]:
    """The prior for a network when none is asked for: 'whole' for a whole-image network
    (with a note saying so), else 'patch' (PaDIS)."""
    if is_whole_image_network(info):
        return "whole", "prior 'whole' chosen: the checkpoint was trained on whole images (patch_sizes ['whole'])"
    return "patch", None


def input_warnings(info: dict, prior: str, shape: tuple[int, int], psize: int | None) -> list[str]:
    """One-line warnings about an H x W image outside what the network was trained on."""
    out = []
    res = trained_resolution(info)
    h, w = shape
    if res is not None and (h > res[0] or w > res[1]):
        out.append(f"image {h}x{w} is larger than the network's training images {res[0]}x{res[1]}: "
                   "structures at this scale were not seen in training (results may be poor)")
    patches = trained_patch_range(info)
    if prior == "whole" and patches is not None and not is_whole_image_network(info):
        out.append(f"this network was trained on patches of {patches[0]}-{patches[1]} px, not whole images: "
                   "prior 'whole' feeds it the whole image (use prior 'patch')")
    if prior in ("patch", "average") and patches is not None and psize is not None \
            and not patches[0] <= psize <= patches[1]:
        out.append(f"psize {psize} is outside the network's trained patch sizes {patches[0]}-{patches[1]} px")
    return out
