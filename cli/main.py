"""``reprscope`` command line: parses arguments and calls the library. No logic lives here."""
from __future__ import annotations

import functools
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, List, Optional

import click
import typer
from typer.core import TyperGroup

from reprscope import __version__
from reprscope.errors import ReprscopeError

def _exception_types(name: str) -> tuple:
    """``name`` from click and from the click that typer vendors (typer ≥ 0.20 has its own copy)."""
    try:  # typer's vendored click (private, so looked up defensively)
        import importlib

        vendored = importlib.import_module("typer._click.exceptions")
    except ImportError:
        vendored = None
    mods = [click.exceptions, vendored]
    return tuple({getattr(m, name) for m in mods if m is not None and hasattr(m, name)})


_NO_ARGS, _CLICK_ERROR, _ABORT = (_exception_types(n) for n in ("NoArgsIsHelpError", "ClickException", "Abort"))


class OneLineErrors(TyperGroup):
    """Usage errors (an unknown option, a missing argument, a value of the wrong type) as one line starting with
    ``error:`` and exit 2, as every other input error, instead of click's boxed usage text."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS as e:
            typer.echo(e.ctx.get_help())
            sys.exit(0)
        except _CLICK_ERROR as e:
            msg = " ".join(e.format_message().split()).rstrip(".")
            hint = f"; see `{e.ctx.command_path} --help`" if getattr(e, "ctx", None) is not None else ""
            typer.echo(f"error: {msg}{hint}", err=True)
            sys.exit(2)
        except _ABORT:
            typer.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Post-hoc representation analysis for self-supervised learning: train, extract, analyze.",
)
_state = {"debug": False}


BRANCH_HELP = ("Network to analyse where the checkpoint holds two: teacher, student, online or momentum (the "
               "teacher is the momentum network, the student the online one); default: the format's (DINO teacher, "
               "MoCo online, …).")
ARCH_HELP = ("timm architecture instead of the one read from the weights' shapes: NAME or NAME:key=value,... "
             "(e.g. resnet50, vit_small_patch16_224, or vit:num_heads=12 to set only the head count).")
POOL_HELP = ("How a ViT's tokens become the representation: cls (the class token) or mean (the patch tokens' "
             "mean, after the final norm); default: what the source's own evaluation reads (DINO cls, MAE mean, …).")
PREPROCESS_HELP = ("source: feed image data the way the checkpoint's source did (resolution, resize, mean/std "
                   "through the data set's parameters; --set data.KEY=... still wins); data: the data set's own.")


#: The metavar of an on/off flag: nothing (Typer would print "<bool>", which reads as if the flag took a value).
FLAG = " "


#: The flag of each library argument an error can name (the library speaks of ``views``, the CLI of --views).
CLI_FLAGS = {"views": "--views", "batch_size": "--batch-size", "limit": "--limit", "data": "--data",
             "preprocess": "--preprocess", "branch": "--branch", "arch": "--arch", "fmt": "--format", "pool": "--pool",
             "metrics": "--metrics/--layers", "layers": "--layers", "analyzers": "--analyzers", "params": "--param",
             "out": "--out", "device": "--device", "set_data": "--set", "config": "--set/--config", "resume": "--resume",
             "scale": "--scale", "compare": "--compare", "storage": "--storage",
             "bootstrap": "--bootstrap", "ci": "--ci"}


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def handle_errors(fn: Callable) -> Callable:
    """Bad input → one line on stderr and exit 2 (a traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ReprscopeError as exc:
            if _state["debug"]:
                traceback.print_exc()
            flag = CLI_FLAGS.get(getattr(exc, "arg", None) or "")
            _fail(f"{exc} ({flag})" if flag else str(exc))
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130)
        except MemoryError:  # a last resort: inputs are bounded before large allocations wherever we can
            if _state["debug"]:
                traceback.print_exc()
            _fail("out of memory: the input asks for more memory than this machine has; use smaller settings")

    return wrapper


def _split_all(values: Optional[List[str]], option: str) -> Optional[List[str]]:
    """A repeatable comma-separated option: every name of every occurrence, in order (None when not given)."""
    if not values:
        return None
    names = [v.strip() for value in values for v in value.split(",") if v.strip()]
    if not names:
        raise ReprscopeError(f"{option} names nothing; give comma-separated names or leave it out for all")
    return list(dict.fromkeys(names))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"reprscope {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", metavar=FLAG, help="Show tracebacks for input errors."),
    version: bool = typer.Option(False, "--version", metavar=FLAG, callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug


@app.command()
@handle_errors
def train(
    method: str = typer.Argument(..., help="Method name (reprscope list methods)."),
    data: str = typer.Option(..., "--data", help="Data set: NAME or NAME:PATH (reprscope list datasets)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Backbone: mlp, convnet or any timm model name (default: mlp for vector data, convnet for images, a tiny ViT for MAE-family methods)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs of the data set's nominal epoch length."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Total steps (overrides --epochs)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Samples per step."),
    out: Path = typer.Option(Path("runs/run"), "--out", help="Run directory for the checkpoints."),
    config: Optional[Path] = typer.Option(None, "--config", help="JSON or TOML file with config sections."),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="section.key=value, e.g. data.content_dims=5 (repeatable)."),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Checkpoint every N epochs (0: only last.pt)."),
    save_every_steps: Optional[int] = typer.Option(None, "--save-every-steps", help="Checkpoint every N steps."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Training seed."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N or auto."),
    resume: bool = typer.Option(False, "--resume", metavar=FLAG, help="Continue from OUT/last.pt."),
    quiet: bool = typer.Option(False, "--quiet", metavar=FLAG, help="No progress bar."),
) -> None:
    """Train METHOD on DATASET with the bundled trainer; writes checkpoints into --out."""
    from reprscope.data import parse_data_arg
    from reprscope.params import parse_assignments
    from reprscope.train import apply_sets, default_config, file_assignments, load_config_file, merge, resolve_config
    from reprscope.train import train as run_train
    from reprscope.train.config import set_backbone

    cfg = default_config(method, parse_data_arg(data), None)  # a default that fits the data and the method
    if config:
        cfg = apply_sets(cfg, file_assignments(load_config_file(config)))
    cli = {"epochs": epochs, "steps": steps, "batch_size": batch_size, "save_every": save_every,
           "save_every_steps": save_every_steps, "seed": seed, "device": device}
    cfg = merge(cfg, {"train": {k: v for k, v in cli.items() if v is not None}})
    if backbone:
        set_backbone(cfg, backbone)
    cfg = resolve_config(apply_sets(cfg, parse_assignments(sets or [])))
    res = run_train(cfg, out, resume=resume, progress=not quiet)
    loss = res.metrics.get("loss")
    typer.echo(f"trained {method} for {cfg['train']['steps'] or cfg['train']['epochs']} "
               f"{'steps' if cfg['train']['steps'] else 'epochs'}" + (f"; final loss {loss:.4f}" if loss is not None else ""))
    typer.echo(f"checkpoints: {res.run_dir} ({len(res.checkpoints)} ckpt-*.pt + last.pt)")


@app.command()
@handle_errors
def extract(
    ckpt: Path = typer.Argument(..., help="Checkpoint file."),
    out: Path = typer.Option(..., "--out", help="Output .h5 file."),
    data: Optional[str] = typer.Option(None, "--data", help="Data set (default: the one the checkpoint was trained on)."),
    views: int = typer.Option(2, "--views", help="Number of augmented views (the clean view is added unless --no-clean)."),
    clean: bool = typer.Option(True, "--clean/--no-clean", help="Store the un-augmented input as view 0."),
    layers: Optional[List[str]] = typer.Option(None, "--layers", help="Comma-separated layer names, repeatable (default: all)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N held-out samples."),
    batch_size: int = typer.Option(1024, "--batch-size", help="Inference batch size."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    seed: int = typer.Option(0, "--seed", help="Seed of the augmented views."),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="data.key=value overrides of the data set."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Checkpoint format (default: detected; reprscope list formats)."),
    branch: Optional[str] = typer.Option(None, "--branch", help=BRANCH_HELP),
    arch: Optional[str] = typer.Option(None, "--arch", help=ARCH_HELP),
    pool: Optional[str] = typer.Option(None, "--pool", help=POOL_HELP),
    preprocess: str = typer.Option("source", "--preprocess", help=PREPROCESS_HELP),
    storage: str = typer.Option("float32", "--storage", help="Embeddings on disk: float32, float16 or bfloat16 "
                                "(half the size; values rounded to ~5e-4 / ~4e-3 relative, which moves rank "
                                "estimates near the noise floor, so keep float32 for spectra; analyze reads any "
                                "of them in float64)."),
    quiet: bool = typer.Option(False, "--quiet", metavar=FLAG, help="No progress bar."),
) -> None:
    """Write the embedding store (HDF5) of CKPT's layers on the held-out set. Under torchrun every process
    extracts its share of the batches and rank 0 writes the store."""
    from reprscope.pipeline import extract_checkpoint
    from reprscope.train.trainer import resolve_device

    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise ReprscopeError(f"--out must name an .h5 file, got '{out}'")
    notes: List[str] = []
    main = _main_process()
    path = extract_checkpoint(ckpt, data, out, layers=_split_all(layers, "--layers"), device=resolve_device(device),
                              views=views, clean=clean, limit=limit, batch_size=batch_size, seed=seed,
                              progress=not quiet and main, fmt=fmt, branch=branch, arch=arch, preprocess=preprocess,
                              set_data=_data_sets(sets), notes=notes, pool=pool, storage=storage)
    if main:
        for note in notes:
            typer.echo(f"note: {note}")
        typer.echo(f"wrote {path}")


def _main_process() -> bool:
    """Not one of the other processes of a torchrun job (rank 0 alone prints and writes the outputs)."""
    return os.environ.get("RANK", "0") == "0"


def _data_sets(sets: Optional[List[str]]) -> dict:
    from reprscope.params import parse_assignments

    out = {}
    for path, value in parse_assignments(sets or []):
        if path[0] != "data" or len(path) != 2:
            raise ReprscopeError(f"--set here takes data.KEY=VALUE; got '{'.'.join(path)}'")
        out[path[1]] = value
    return out


@app.command()
@handle_errors
def analyze(
    sources: List[Path] = typer.Argument(..., help="Checkpoints, .h5 stores or run directories."),
    out: Optional[Path] = typer.Option(None, "--out", help="Table to write (.csv, or .parquet)."),
    data: Optional[str] = typer.Option(None, "--data", help="Data set for checkpoints (default: their training data)."),
    analyzers: Optional[List[str]] = typer.Option(None, "--analyzers", help="Comma-separated analyzers, repeatable (default: all; reprscope list analyzers)."),
    params: Optional[List[str]] = typer.Option(None, "--param", help="ANALYZER.KEY=VALUE (repeatable)."),
    layers: Optional[List[str]] = typer.Option(None, "--layers", help="Comma-separated layers, repeatable (default: all)."),
    views: int = typer.Option(2, "--views", help="Augmented views when a checkpoint is extracted."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Held-out samples when a checkpoint is extracted."),
    device: str = typer.Option("cpu", "--device", help="Device for extraction."),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="data.key=value overrides of the data set."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Checkpoint format (default: detected; reprscope list formats)."),
    branch: Optional[str] = typer.Option(None, "--branch", help=BRANCH_HELP),
    arch: Optional[str] = typer.Option(None, "--arch", help=ARCH_HELP),
    pool: Optional[str] = typer.Option(None, "--pool", help=POOL_HELP),
    preprocess: str = typer.Option("source", "--preprocess", help=PREPROCESS_HELP),
    compare: Optional[Path] = typer.Option(None, "--compare", help="A checkpoint or .h5 store of the same inputs: "
                                           "similarity compares every layer of each SOURCE with every layer of it."),
    bootstrap: int = typer.Option(0, "--bootstrap", help="B resamples of the samples: a percentile interval of every "
                                  "scalar metric (columns value_lo, value_hi, bootstrap)."),
    ci: float = typer.Option(0.95, "--ci", help="Level of the --bootstrap interval."),
    random_init: bool = typer.Option(False, "--random-init", metavar=FLAG, help="Also analyze each checkpoint's architecture at "
                                     "initialisation (source CKPT#random_init): the chance level of every metric."),
    quiet: bool = typer.Option(False, "--quiet", metavar=FLAG, help="No progress bar and no summary."),
) -> None:
    """Analyze SOURCE(s) and print a summary; write the tidy table with --out."""
    from reprscope.params import parse_assignments
    from reprscope.pipeline import analyze as run_analyze, condense_notes, parse_params, select_analyzers, summarize
    from reprscope.table import check_writable, write_table
    from reprscope.train.trainer import resolve_device

    chosen = select_analyzers(_split_all(analyzers, "--analyzers"))
    pp = parse_params(parse_assignments(params or [], "--param"), chosen)
    if out is not None and out.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise ReprscopeError(f"--out must end in .csv or .parquet, got '{out}'")
    if out is not None:
        check_writable(out)
    main = _main_process()
    res = run_analyze([str(s) for s in sources], data=data, analyzers=chosen, params=pp, layers=_split_all(layers, "--layers"),
                      views=views, limit=limit, device=str(resolve_device(device)), progress=not quiet and main,
                      set_data=_data_sets(sets), fmt=fmt, branch=branch, arch=arch, preprocess=preprocess,
                      compare=compare, bootstrap=bootstrap, ci=ci, random_init=random_init, pool=pool)
    if not main:  # the other processes of a torchrun job: rank 0 prints and writes the table
        return
    if not quiet:
        typer.echo(summarize(res.table))
        for note in condense_notes(res.notes):
            typer.echo(f"note: {note}")
    if out is not None:
        write_table(res.table, out)
        typer.echo(f"wrote {out} ({len(res.table)} rows)")


@app.command()
@handle_errors
def check(
    source: Path = typer.Argument(..., help="Checkpoint, .h5 store or run directory to check."),
    baseline: Path = typer.Option(..., "--baseline", help="A table `reprscope analyze` wrote (.csv or .parquet)."),
    rtol: Optional[float] = typer.Option(None, "--rtol", help="Default relative tolerance (1e-3)."),
    atol: Optional[float] = typer.Option(None, "--atol", help="Default absolute tolerance (1e-6)."),
    tolerances: Optional[Path] = typer.Option(None, "--tolerances", help="TOML (or YAML) file with default and rule tables."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Globs on ANALYZER/METRIC or METRIC, comma-separated."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Globs on layer names, comma-separated."),
    json_out: bool = typer.Option(False, "--json", metavar=FLAG, help="Print the result as JSON."),
    data: Optional[str] = typer.Option(None, "--data", help="Data set for checkpoints (default: their training data)."),
    views: int = typer.Option(2, "--views", help="Augmented views when a checkpoint is extracted."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Held-out samples when a checkpoint is extracted "
                                        "(default: the baseline's sample count n)."),
    device: str = typer.Option("cpu", "--device", help="Device for extraction and analysis."),
) -> None:
    """Recompute SOURCE's table and compare it with --baseline: exit 0 within tolerance, 1 regression, 2 bad input.

    A checkpoint is extracted on as many samples as the baseline records (its n column) unless --limit says
    otherwise; values computed on another data set or sample count are refused (exit 2), not compared."""
    import json

    from reprscope.check import check as run_check, format_result, result_json
    from reprscope.train.trainer import resolve_device

    result = run_check(source, baseline, rtol=rtol, atol=atol, tolerances=tolerances, metrics=metrics, layers=layers,
                       data=data, views=views, limit=limit, device=str(resolve_device(device)))
    notes = result.notes
    typer.echo(json.dumps(result_json(result, str(source), str(baseline)), indent=2, default=str) if json_out
               else format_result(result, notes=notes))
    if not result.ok:
        raise typer.Exit(1)


@app.command()
@handle_errors
def report(
    tables: List[Path] = typer.Argument(..., help="Tables written by `reprscope analyze`."),
    out: Path = typer.Option(..., "--out", help="Directory for the figures."),
    formats: str = typer.Option("png,pdf", "--formats", help="Comma-separated: png, pdf."),
) -> None:
    """Figures from tables: spectra, R² per latent across layers, per-layer profiles, trajectories over steps."""
    from reprscope.report import make_report

    paths = make_report([str(t) for t in tables], out, formats=_split_all([formats], "--formats"), echo=typer.echo)
    for p in paths:
        typer.echo(f"wrote {p}")


@app.command()
@handle_errors
def inspect(
    ckpt: Path = typer.Argument(..., help="Checkpoint file."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Checkpoint format (default: detected; reprscope list formats)."),
    branch: Optional[str] = typer.Option(None, "--branch", help=BRANCH_HELP),
    arch: Optional[str] = typer.Option(None, "--arch", help=ARCH_HELP),
    pool: Optional[str] = typer.Option(None, "--pool", help=POOL_HELP),
) -> None:
    """What the loader detected: format, method, architecture, branch, preprocessing, parts and their keys,
    layers, unused keys. A file no format recognises: its keys and tensors, then the error (exit 2)."""
    from reprscope.formats import LoadOptions
    from reprscope.inspect import inspect_checkpoint

    lines, error = inspect_checkpoint(ckpt, fmt, LoadOptions(branch=branch, arch=arch, pool=pool))
    if lines:
        typer.echo("\n".join(lines))
    if error is not None:
        raise error


@app.command()
@handle_errors
def cache(
    clear: bool = typer.Option(False, "--clear", metavar=FLAG, help="Remove every store of the extraction cache."),
) -> None:
    """Show the extraction cache (where, how many stores, how large, its bound) or clear it."""
    from reprscope.pipeline import cache_dir, cache_entries, cache_limit, prune_cache

    entries = cache_entries()
    size = sum(p.stat().st_size for p in entries)
    if clear:
        removed = prune_cache(limit=0)
        typer.echo(f"removed {len(removed)} stores ({size / 2**20:.1f} MiB) from {cache_dir() / 'extract'}")
        return
    typer.echo(f"{cache_dir() / 'extract'}: {len(entries)} stores, {size / 2**20:.1f} MiB "
               f"(bound {cache_limit() / 2**30:.1f} GiB, REPRSCOPE_CACHE_MAX; least recently used removed first)")


@app.command("list")
@handle_errors
def list_(what: str = typer.Argument(..., help="methods | analyzers | datasets | formats | backbones | heads | augmentations | recipes")) -> None:
    """List what is available, one line each."""
    from reprscope.catalog import catalog

    typer.echo("\n".join(catalog(what)))


@app.command()
@handle_errors
def demo(
    out: Path = typer.Option(Path("reprscope-demo"), "--out", help="Directory for the checkpoint, the .h5 and the CSV."),
    steps: int = typer.Option(None, "--steps", help="Training steps (default: about a minute on 2 CPU cores)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads for the training (default: every "
                                          "core on an idle machine, one when the cores are busy)."),
    quiet: bool = typer.Option(False, "--quiet", metavar=FLAG, help="No progress bars."),
) -> None:
    """Train SimCLR on the content/style data, extract, analyze, and print Rusak et al. 2022's finding."""
    from reprscope.demo import run_demo

    run_demo(out, steps=steps, progress=not quiet, echo=typer.echo, threads=threads)


@app.command()
@handle_errors
def reproduce(
    name: Optional[str] = typer.Argument(None, help="Recipe name (reprscope reproduce --list)."),
    scale: str = typer.Option("cpu", "--scale", help="cpu (under 10 minutes on 2 cores), long (at most 30 minutes per recipe on 2 cores: the cpu setting trained longer), gpu (the papers' setting) or tiny."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: reproduce/NAME-SCALE)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto (training and analysis)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Folder holding cifar10/, cifar100/ … for the gpu scale."),
    list_: bool = typer.Option(False, "--list", metavar=FLAG, help="List the recipes."),
    quiet: bool = typer.Option(False, "--quiet", metavar=FLAG, help="No progress bars."),
    from_table: bool = typer.Option(False, "--from-table", metavar=FLAG,
                                    help="Recompute the findings, figures and summary.md of the finished run in --out "
                                         "from its table.csv (nothing is trained)."),
) -> None:
    """Reproduce a paper's finding: train its runs, analyze them, write table.csv, figures/ and summary.md."""
    from reprscope.reproduce import RECIPES, reevaluate
    from reprscope.reproduce import reproduce as run_recipe

    if list_ or not name:
        if not list_:
            raise ReprscopeError("give a recipe name, or --list to see them")
        for n in RECIPES.names():
            meta = RECIPES.meta(n)
            typer.echo(f"{n:24s} {meta.get('paper', '')}: {meta.get('summary', '')}")
        return
    if from_table:
        if out is None:
            raise ReprscopeError("--from-table needs --out, the folder of the finished run")
        res = reevaluate(name, scale, out)
    else:
        res = run_recipe(name, scale=scale, out=out, device=device, progress=not quiet, echo=typer.echo,
                         data_root=data_root)
    held = [f.held for f in res.findings if f.held is not None]
    typer.echo("")
    typer.echo(res.summary.read_text())
    if scale == "tiny":
        typer.echo(f"smoke scale: the recipe ran end to end, no verdicts; table: {res.table}; summary: {res.summary}")
    else:
        typer.echo(f"{sum(held)} of {len(held)} findings held; table: {res.table}; summary: {res.summary}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
