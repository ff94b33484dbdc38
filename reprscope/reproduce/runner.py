"""Run a recipe: train its runs (reusing finished ones), analyze their checkpoints, add the training logs and
the recipe's extra rows, and write ``table.csv``, ``figures/`` and ``summary.md`` into the output directory."""
from __future__ import annotations

import csv
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pandas as pd

from ..errors import ReprscopeError
from ..io_utils import atomic_path
from ..pipeline import analyze
from ..table import make_table, normalize, read_table, write_table
from ..train import apply_sets, default_config, resolve_config, train
from .base import RECIPES, SCALES, Context, Finding, Recipe, RunSpec


@dataclass
class ReproduceResult:
    out: Path
    table: Path
    summary: Path
    figures: List[Path]
    findings: List[Finding]


def run_config(spec: RunSpec, seed: int, device: str) -> Dict[str, Any]:
    """The resolved training config of ``spec`` for one seed."""
    cfg = default_config(spec.method, dict(spec.data), spec.backbone)
    sets = dict(spec.sets)
    sets.setdefault("train.device", device)
    sets["train.seed"] = seed
    # a head's kind (or the head itself) first: another kind resets the head's settings
    ordered = sorted(sets.items(), key=lambda kv: not (kv[0] in ("projector", "predictor", "backbone")
                                                        or kv[0].endswith(".kind")))
    return resolve_config(apply_sets(cfg, [(k.split("."), v) for k, v in ordered]))


def _train_once(cfg: Dict[str, Any], run_dir: Path, progress: bool) -> "tuple[Path, bool]":
    """Train into ``run_dir`` unless a finished run with the same config is there (resume an interrupted one);
    returns the last checkpoint and whether this call trained."""
    last = run_dir / "last.pt"
    if last.is_file():
        import torch

        ck = torch.load(last, map_location="cpu", weights_only=True)
        if ck.get("config") == cfg:
            return last, False
        raise ReprscopeError(f"'{run_dir}' holds a run with other settings; use another out folder or remove it", arg="out")
    resume = any(run_dir.glob("ckpt-*.pt"))
    return train(cfg, run_dir, resume=resume, progress=progress).last, True


def _train_log_rows(run_dir: Path, method: str) -> List[Dict[str, Any]]:
    """The run's metrics.csv as table rows (analyzer ``train``: loss, knn_top1 … per step)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r["name"] in ("lr", "images_per_s"):
                continue
            out.append({"source": str(run_dir), "step": int(r["step"]), "method": method, "layer": "", "view": "",
                        "analyzer": "train", "metric": r["name"], "index": "", "value": float(r["value"])})
    return out


def reproduce(name: str, scale: str = "cpu", out: Optional[str | Path] = None, device: str = "cpu",
              progress: bool = True, echo: Callable[[str], None] = print, data_root: Optional[str] = None) -> ReproduceResult:
    """Run recipe ``name`` at ``scale`` into ``out`` (default ``reproduce/NAME-SCALE``); ``data_root`` is where
    the gpu scale finds its data sets on disk (``DATA_ROOT/cifar10`` …)."""
    if scale not in SCALES:
        raise ReprscopeError(f"scale must be one of {', '.join(SCALES)}; got '{scale}'", arg="scale")
    recipe: Recipe = RECIPES.get(name)()
    recipe.data_root = data_root
    out = Path(out or Path("reproduce") / f"{name}-{scale}")
    out.mkdir(parents=True, exist_ok=True)
    specs = recipe.runs(scale)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ReprscopeError(f"recipe {name} has two runs with the same name")
    t0 = time.perf_counter()
    frames: List[pd.DataFrame] = []
    run_dirs: Dict[str, Dict[int, Path]] = {}
    total = sum(len(s.seeds) for s in specs)
    k = trained = 0
    for spec in specs:
        for seed in spec.seeds:
            k += 1
            cfg = run_config(spec, seed, device)
            run_dir = out / "runs" / f"{spec.name}-seed{seed}"
            echo(f"[{k}/{total}] {spec.name} (seed {seed}): {spec.method} on {spec.data['name']}")
            last, fresh = _train_once(cfg, run_dir, progress)
            trained += int(fresh)
            run_dirs.setdefault(spec.name, {})[seed] = run_dir
            sources = [run_dir] if spec.checkpoints == "all" else [last]
            res = analyze(sources, analyzers=list(spec.analyzers), params=spec.params, layers=spec.layers,
                          views=spec.views, device=device, progress=progress)
            t = pd.concat([res.table, make_table(_train_log_rows(run_dir, spec.method))], ignore_index=True)
            t["run"] = spec.name
            t["seed"] = seed
            for key, v in spec.tags.items():
                t[key] = v
            frames.append(t)
    extra = recipe.extra(scale, Context(out, run_dirs, device))
    if extra:
        frames.append(make_table(extra))
    table = normalize(pd.concat(frames, ignore_index=True)) if frames else make_table([])
    table_path = write_table(table, out / "table.csv")
    table = read_table(table_path)  # what findings see is exactly what table.csv holds
    findings = recipe.findings(table, scale)
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    figs = recipe.figures(table, fig_dir)
    summary = write_summary(recipe, scale, findings, figs, out, time.perf_counter() - t0, trained, total)
    return ReproduceResult(out, table_path, summary, figs, findings)


_INVOCATION = re.compile(r"This invocation: (\d+) s wall time, (\d+) of (\d+) runs trained now")


def reevaluate(name: str, scale: str, out: str | Path) -> ReproduceResult:
    """Recompute the findings, figures and ``summary.md`` of a finished ``reproduce`` run from its ``table.csv``
    (after a recipe's findings changed): nothing is trained or analysed. The summary keeps the wall time and run
    counts of the invocation that wrote the table."""
    if scale not in SCALES:
        raise ReprscopeError(f"scale must be one of {', '.join(SCALES)}; got '{scale}'", arg="scale")
    recipe: Recipe = RECIPES.get(name)()
    out = Path(out)
    table_path, summary = out / "table.csv", out / "summary.md"
    if not table_path.is_file() or not summary.is_file():
        raise ReprscopeError(f"'{out}' holds no finished run of a recipe (table.csv and summary.md)", arg="out")
    head = summary.read_text(errors="replace")[:4096]
    m = _INVOCATION.search(head)
    if not m or f"— scale `{scale}`" not in head:
        raise ReprscopeError(f"'{summary}' is not the summary of a scale-{scale} run", arg="out")
    table = read_table(table_path)
    findings = recipe.findings(table, scale)
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    figs = recipe.figures(table, fig_dir)
    path = write_summary(recipe, scale, findings, figs, out, float(m.group(1)), int(m.group(2)), int(m.group(3)))
    return ReproduceResult(out, table_path, path, figs, findings)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_summary(recipe: Recipe, scale: str, findings: List[Finding], figs: List[Path], out: Path,
                  seconds: float, trained: int, total: int) -> Path:
    """``summary.md``: each finding with its numbers and verdict, computed from table.csv."""
    lines = [f"# {recipe.title or recipe.name} — scale `{scale}`", "", f"Paper: {recipe.paper}. {recipe.summary}", "",
             f"Every number below is computed from `table.csv` by the recipe `{recipe.name}` "
             f"(reprscope/reproduce/recipes). This invocation: {seconds:.0f} s wall time, {trained} of {total} "
             f"runs trained now (the others were finished runs in `runs/`, reused).", ""]
    held = [f.held for f in findings if f.held is not None]
    smoke = scale == "tiny"
    if smoke:  # a smoke test of the pipeline: its runs are far too short for any verdict to mean something
        lines.append("**Scale `tiny` is a smoke test: it checks that the recipe runs end to end. Its runs are far "
                     "too short for the paper's effects to appear, so no finding is judged here; run "
                     "`--scale cpu` (or `gpu`) for verdicts.**")
    else:
        lines.append(f"**{sum(held)} of {len(held)} findings held.**" if held else "**No finding could be evaluated.**")
    lines.append("")
    for i, f in enumerate(findings, 1):
        verdict = ("NOT JUDGED (smoke scale)" if smoke else
                   "HELD" if f.held else ("NOT REPRODUCED" if f.held is not None else "NOT EVALUATED"))
        lines.append(f"## {i}. {f.claim} — {verdict}")
        lines.append("")
        lines.append(f"Source: {f.source}.")
        lines.append("")
        if f.numbers:
            lines.append("| quantity | value |")
            lines.append("| --- | --- |")
            lines.extend(f"| {k} | {_fmt(v)} |" for k, v in f.numbers.items())
            lines.append("")
        if f.detail:
            lines.append(f.detail)
            lines.append("")
    if figs:
        lines.append("## Figures")
        lines.append("")
        lines.extend(f"- `{p.relative_to(out)}`" for p in figs if p.suffix == ".png")
        lines.append("")
    path = out / "summary.md"
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines))
    (out / "findings.json").write_text(json.dumps(
        [{"claim": f.claim, "source": f.source, "numbers": f.numbers, "held": f.held} for f in findings], indent=2,
        default=float))
    return path
