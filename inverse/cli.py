"""Option parsing and validation shared by the command-line tools (inverse_nodist.py, generate.py).

Problems are ``click`` usage errors (exit code 2) with one line naming the option.
"""

from __future__ import annotations

from pathlib import Path

import click

# CLI option -> operator keyword argument (inverse.operators.operator_options)
PROBLEM_OPTIONS = dict(views="views", angle_range="angle_range", detectors="det_count", det_extent="det_extent", kernel_size="kernel_size",
                       kernel_sigma="kernel_sigma", factor="factor", mask="mask", mask_fraction="mask_fraction",
                       src_radius="src_radius", det_radius="det_radius", det_height="det_height",
                       slice_spacing="slice_spacing")
SOLVER_OPTIONS = ("zeta", "inner", "eps", "dc_grad", "dc_step", "predictor", "eta", "lam", "cg_iters", "init")

# What --zeta, --lam, --dc-step and the per-level iterations mean for each solver of
# inverse.samplers.SAMPLERS: a row per solver, a cell per SOLVER_TABLE_COLUMNS entry ('-': the
# solver does not take that option, a usage error). "{name}" in a cell is filled from the code:
# the solver's default of option `name` (sampler_options), zeta_landweber / zeta_paper
# (ZETA_DEFAULTS), ddnm_cg_iters (DDNM_CG_ITERS); a last column gives the default levels
# (SCHEDULE_DEFAULTS). inverse_nodist.py --help shows solver_table_help(), docs/ARCHITECTURE.md
# solver_table_markdown(); tests check that both are current and every solver has a row.
SOLVER_TABLE_COLUMNS = ("--zeta", "--lam", "--dc-step", "iterations per level")
SOLVER_TABLE = {
    "dps": ("data step zeta/||A||² down the gradient of ½||y - A D(x)||² (through the network; --dc-grad "
            "x0: Aᵀ(A D(x) - y)) [{zeta_landweber}]; with --dc-step paper an absolute step zeta down the "
            "gradient of ||y - A D(x)|| [{zeta_paper}]",
            "-",
            "landweber, or paper: the paper code's step (see --zeta), started from clamp(pinv(y), 0, 1) "
            "without noise [{dc_step}]",
            "--inner K Langevin iterations, each with one data step [{inner}]"),
    "langevin": ("x += zeta/||A||² Aᵀ(y - A x) after each Langevin iteration [{zeta}]", "-", "-",
                 "--inner K Langevin iterations, one prior call each [{inner}]"),
    "pc": ("x += zeta/||A||² Aᵀ(y - A x) after each corrector iteration and after the predictor [{zeta}]",
           "-", "-",
           "--inner K corrector iterations, then the predictor: K + 1 prior calls [{inner}]"),
    "ddnm": ("-", "-", "-",
             "one prior call; the correction A⁺r of r = y - A D(x) is op.pinv(r) or, with --cg-iters K, "
             "K CG iterations on AᵀA d = Aᵀr from d = 0 [op.pinv where it is a stable pseudo-inverse, "
             "else K = {ddnm_cg_iters} (CT)]"),
    "dds": ("-",
            "weight of ||x - D(x)||² in units of ||A||²: CG on (AᵀA + lam ||A||² I) x = Aᵀy + "
            "lam ||A||² D(x) from D(x) [{lam}]",
            "-",
            "one prior call, --cg-iters K CG iterations [{cg_iters}]"),
    "diffpir": ("renoise mix: 0 the predicted noise (x - x0)/sigma only, 1 fresh noise only [{zeta}]",
                "rho = max(lam noise_std² / sigma², {rho_min} ||A||²) is the weight of ||x - D(x)||²: CG on "
                "(AᵀA + rho I) x = Aᵀy + rho D(x) from D(x); rho grows as sigma falls [{lam}]",
                "-",
                "one prior call, --cg-iters K CG iterations [{cg_iters}]"),
}


def solver_table() -> dict[str, tuple[str, ...]]:
    """SOLVER_TABLE with the defaults filled in and the levels column added (see SOLVER_TABLE)."""
    from inverse.samplers import (
        DDNM_CG_ITERS,
        PROBLEM_SCHEDULES,
        SCHEDULE_DEFAULTS,
        ZETA_DEFAULTS,
        sampler_options,
    )
    show = lambda v: format(v, "g") if isinstance(v, float) else str(v)  # noqa: E731
    rows = {}
    for name, cells in SOLVER_TABLE.items():
        fields = dict(sampler_options(name), ddnm_cg_iters=DDNM_CG_ITERS,
                      **{f"zeta_{k}": v for k, v in ZETA_DEFAULTS.items()})
        fields = {k: show(v) for k, v in fields.items()}
        sched = {k: show(float(v)) if k != "steps" else str(v) for k, v in SCHEDULE_DEFAULTS[name].items()}
        levels = f"{sched['steps']}, sigma {sched['sigma_max']} to {sched['sigma_min']}"
        for problem, change in PROBLEM_SCHEDULES.get(name, {}).items():
            levels += f" ({problem}: " + ", ".join(f"{k} {show(v)}" for k, v in change.items()) + ")"
        rows[name] = tuple(cell.format(**fields) for cell in cells) + (levels,)
    return rows


def solver_table_help(width: int = 76) -> str:
    """The solver table as --help text: one block a solver, one line (wrapped) a column."""
    import textwrap
    heads = SOLVER_TABLE_COLUMNS + ("levels",)
    indent = max(map(len, heads)) + 4
    blocks = ["What the solver options mean per solver ('-': that solver does not take it, a usage error; "
              "[x]: the default x):"]
    for name, cells in solver_table().items():
        lines = ["\b", name]
        for head, cell in zip(heads, cells):
            lines += textwrap.wrap(cell, width, initial_indent=f"  {head}".ljust(indent),
                                   subsequent_indent=" " * indent, break_on_hyphens=False)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def solver_table_markdown() -> str:
    """The solver table as a Markdown table (``|`` inside a cell escaped)."""
    heads = ("solver",) + SOLVER_TABLE_COLUMNS + ("levels (--steps, --sigma-max to --sigma-min)",)
    rows = [heads, ("---",) * len(heads)]
    rows += [(f"`{name}`",) + cells for name, cells in solver_table().items()]
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows)


def default_network() -> str | None:
    """The one ``*.safetensors`` checkpoint shipped under checkpoints/ (or installed as
    package data, inverse.shipped), if there is exactly one."""
    from inverse.shipped import checkpoints_dir
    folder = checkpoints_dir()
    found = sorted(folder.glob("*.safetensors")) if folder is not None else []
    return str(found[0]) if len(found) == 1 else None


def _one_or_two_ints(value: str, form: str, positive: str) -> list[int]:
    """'24' or '15,23' -> [24] or [15, 23], each >= 1; else a BadParameter naming ``form``."""
    try:
        parts = [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected {form} in pixels") from None
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise click.BadParameter(f"{value!r}: expected {form} with {positive}")
    return parts


def parse_size(ctx, param, value):
    """'256' or '256,192' (H,W) -> [H, W]."""
    if value is None:
        return None
    parts = _one_or_two_ints(value, "S or H,W", "positive sizes")
    return parts * (3 - len(parts))


def parse_pad(ctx, param, value):
    """'24' -> 24, '15,23' -> [15, 23] (rows, columns); each >= 1."""
    if value is None:
        return None
    parts = _one_or_two_ints(value, "P or 'rows,cols'", "sizes >= 1")
    return parts[0] if len(parts) == 1 else parts


def patch_grid_options(sizes: str):
    """The --pad, --psize and --stride options of a tool that samples with a patch prior; ``sizes``
    says where the image sizes the grid is chosen from come from (e.g. "--size")."""
    options = [
        click.option("--pad", callback=parse_pad, help="Zero padding per side, pixels: P or 'rows,cols' "
                     f"[default: chosen from {sizes}; 24 with --psize 56 for 256x256, the paper's]"),
        click.option("--psize", type=click.IntRange(min=1), help=f"Patch size, pixels [default: chosen from {sizes} "
                     "within the network's trained patch sizes, closest to the paper's 56/24 ratio]"),
        click.option("--stride", type=click.IntRange(min=1), help="Patch stride of --prior average [default: psize//2]"),
    ]

    def apply(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return apply


def pad_fill_defaults() -> str:
    """inverse.samplers.PAD_FILL_DEFAULTS for --help: 'zeros for all' or 'dps noise, ...'."""
    from inverse.samplers import PAD_FILL_DEFAULTS
    fills = set(PAD_FILL_DEFAULTS.values())
    if len(fills) == 1:
        return f"{fills.pop()} for every solver"
    return ", ".join(f"{name} {fill}" for name, fill in PAD_FILL_DEFAULTS.items())


def parse_window(ctx, param, value):
    """'-1000,2000' -> [-1000.0, 2000.0] (HU window: lower < upper)."""
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected 'HUmin,HUmax', e.g. -1000,2000") from None
    if not lo < hi:
        raise click.BadParameter(f"{value!r}: the lower bound must be below the upper one")
    return [lo, hi]


def parse_baselines(ctx, param, value):
    from inverse.baselines import BASELINES
    names = [v.strip() for v in value.split(",") if v.strip() and v.strip() != "none"]
    names = ["fbp" if n == "pinv" else n for n in names]  # the same baseline: FBP is CT's pseudo-inverse
    bad = [n for n in names if n not in BASELINES]
    if bad:
        raise click.BadParameter(f"unknown baseline {bad[0]!r}; expected a comma list of "
                                 f"{sorted(BASELINES)} ('pinv' = 'fbp') or 'none'")
    return list(dict.fromkeys(names))


def check_network(value):
    value = value or default_network()
    if value is None:
        raise click.UsageError("--network is required (no default checkpoint under checkpoints/)")
    if not Path(value).is_file():
        raise click.BadParameter(f"{value}: no such checkpoint file", param_hint="'--network'")
    return value


def pick_prior(prior: str | None, network: str) -> str:
    """--prior as given, or the checkpoint's kind (inverse.checkpoint_info.default_prior), with
    a note on stderr when that is not the patch prior."""
    if prior is not None:
        return prior
    from inverse.checkpoint_info import default_prior, training_info
    prior, note = default_prior(training_info(network))
    if note:
        click.echo(f"note: {note}", err=True)
    return prior


def problem_options(opts: dict) -> dict:
    """Operator keyword arguments from the set problem options; one not taken by --problem is a usage error."""
    from inverse.operators import operator_options
    valid = operator_options(opts["problem"])
    out = {}
    for cli, key in PROBLEM_OPTIONS.items():
        if opts[cli] is None:
            continue
        if key not in valid:
            raise click.UsageError(f"--{cli.replace('_', '-')} does not apply to --problem {opts['problem']}")
        out[key] = opts[cli]
    return out


def solver_options(opts: dict) -> dict:
    """The set solver options; one that --solver does not take is a usage error."""
    from inverse.samplers import sampler_options
    valid = sampler_options(opts["solver"])
    out = {}
    for key in SOLVER_OPTIONS:
        if opts[key] is None:
            continue
        if key not in valid:
            raise click.UsageError(f"--{key.replace('_', '-')} does not apply to --solver {opts['solver']} "
                                   f"(its options: {', '.join(valid)})")
        out[key] = opts[key]
    return out
