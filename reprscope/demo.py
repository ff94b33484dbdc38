"""``reprscope demo``: the whole path on the embedded content/style data, in about a minute on a CPU.

Trains SimCLR on the content/style DGP (Rusak et al. 2022 §4.1), extracts every encoder layer and the projector's
layers on the held-out set, runs the analyzers and prints Rusak et al. 2022's finding — style latents are linearly
readable in the encoder's layers and lost inside the projector, while content survives — computed from the
table, with a verdict that says whether it held.
"""
from __future__ import annotations

import os

from pathlib import Path
from typing import Callable, Dict, Optional

import pandas as pd
import torch

from .data import build_dataset
from .extract import Store, extract
from .formats import load_checkpoint
from .pipeline import analyze_store
from .table import make_table, write_table
from .train import apply_sets, default_config, resolve_config, train

#: The demo's settings. A 2-layer mixing keeps g invertible and non-linear while letting a one-minute run
#: invert it; a 3-layer projector makes the collapse visible layer by layer.
DEMO_SETTINGS = {
    "data": {"space": "box", "latent_dim": 10, "content_dims": 5, "style_spread": 0.25, "mix_layers": 2},
    "backbone": {"width": 64, "depth": 4},
    "projector": {"kind": "mlp", "hidden_dim": 64, "out_dim": 10, "layers": 3, "bn": True},
    "method": {"temperature": 0.5},
    "optim": {"lr": 3e-3},
    "train": {"batch_size": 512, "steps": 2500, "save_every_steps": 500, "seed": 0, "device": "cpu"},
}


def demo_config(steps: Optional[int] = None) -> Dict:
    cfg = default_config("simclr", {"name": "dgp", **DEMO_SETTINGS["data"]})
    sets = [([sec, k], v) for sec in ("backbone", "method", "optim", "train") for k, v in DEMO_SETTINGS[sec].items()]
    cfg["model"]["projector"] = dict(DEMO_SETTINGS["projector"])
    cfg = apply_sets(cfg, sets)
    if steps is not None:
        cfg["train"]["steps"] = int(steps)
        cfg["train"]["save_every_steps"] = max(1, int(steps) // 5)
    return resolve_config(cfg)


def finding(table: pd.DataFrame) -> Dict[str, float | bool | str]:
    """Paper 001's finding, computed from the identifiability rows of ``table``.

    Returns the mean style R² over the encoder's layers, the style R² at the projector output, the lowest
    content R² over the encoder and the projector's hidden layers, and whether the finding held (style ≥ 0.5 in
    the encoder, at most a quarter of that after the projector, content ≥ 0.5 up to the projector's last
    hidden layer).
    """
    ident = table[(table["analyzer"] == "identifiability") & (table["index"] == "")]
    piv = ident.pivot_table(index="layer", columns="metric", values="value", sort=False)
    enc = [l for l in piv.index if l == "encoder" or l.startswith("encoder.")]
    hidden = [l for l in piv.index if l.startswith("projector.")]
    style_enc = float(piv.loc[enc, "r2_style_mean"].mean())
    style_proj = float(piv.loc["projector", "r2_style_mean"])
    content_min = float(piv.loc[enc + hidden, "r2_content_mean"].min())
    held = style_enc >= 0.5 and style_proj <= 0.25 * style_enc and content_min >= 0.5
    return {"style_encoder": style_enc, "style_projector": style_proj, "content_min": content_min,
            "content_projector": float(piv.loc["projector", "r2_content_mean"]), "held": held}


def demo_threads(threads: Optional[int] = None) -> int:
    """Torch threads for the demo's training: ``threads`` if given; else every core when the machine is idle,
    one when other work already keeps the cores busy (its small products then gain nothing from a second thread
    that waits for a busy core; on a loaded 2-core machine two threads took ten times longer than one)."""
    if threads:
        return max(1, int(threads))
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        load = 0.0
    return 1 if load >= cores - 0.5 else max(1, torch.get_num_threads())


def run_demo(out: Path | str, steps: Optional[int] = None, progress: bool = True,
             echo: Callable[[str], None] = print, threads: Optional[int] = None) -> Dict[str, object]:
    """Train, extract, analyze; print the finding and where everything was written. ``threads``: torch threads
    of the training (default :func:`demo_threads`)."""
    out = Path(out)
    cfg = demo_config(steps)
    n_threads = demo_threads(threads)
    echo(f"1/3 training SimCLR on the content/style DGP ({cfg['train']['steps']} steps, batch {cfg['train']['batch_size']}, "
         f"CPU, {n_threads} thread{'s' if n_threads > 1 else ''})")
    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        res = train(cfg, out / "run", progress=progress)
    finally:
        torch.set_num_threads(before)
    echo("2/3 extracting every layer on the held-out set")
    model = load_checkpoint(res.last)
    h5 = extract(model, build_dataset(cfg["data"]), out / "embeddings.h5", views=2, progress=progress)
    echo("3/3 analyzing (center, spectrum, identifiability)")
    with Store(h5) as st:
        rows, notes = analyze_store(st, ["center", "spectrum", "identifiability"], source=str(res.last))
    table = make_table(rows)
    csv = write_table(table, out / "table.csv")
    ident = table[(table["analyzer"] == "identifiability") & (table["metric"].isin(["r2_content_mean", "r2_style_mean"]))]
    piv = ident.pivot_table(index="layer", columns="metric", values="value", sort=False)
    piv.columns = ["R² content" if c == "r2_content_mean" else "R² style" for c in piv.columns]
    echo("")
    echo("Linear readout of the ground-truth latents, per layer (held-out R², Rusak et al. 2022 Fig. 1):")
    echo(piv.to_string(float_format=lambda v: f"{v:6.3f}"))
    f = finding(table)
    echo("")
    echo(f"Style R² is {f['style_encoder']:.2f} on average in the encoder and {f['style_projector']:.2f} after the projector; "
         f"content R² stays >= {f['content_min']:.2f} up to the projector's last hidden layer "
         f"({f['content_projector']:.2f} at its output).")
    echo("Finding of Rusak et al. 2022 (style collapses only in the projector): " + ("HELD" if f["held"] else "NOT REPRODUCED in this run"))
    echo("")
    echo(f"checkpoint: {res.last}")
    echo(f"embeddings: {h5}")
    echo(f"table:      {csv}")
    return {"checkpoint": res.last, "h5": h5, "table": csv, "finding": f, "notes": notes}
