"""Rusak et al. 2022: content suppresses style — dimensionality collapse in contrastive learning.

Runs (SimCLR on the content/style DGP, d = 10, MLP encoder with a 3-layer MLP projector as in ``reprscope demo``):

* box, d_c = 5, τ_c = τ_s (3 seeds) — style collapses in the last layer only (§4.1, Fig. 1 middle);
* box, d_c = 0 — no content: nothing to suppress style, no collapse;
* box, d_c = 5, τ_c < τ_s (per-dimension temperatures) — the collapse is alleviated (§3, Fig. 1);
* sphere, d_c = 5, τ_c = τ_s; τ_c < τ_s; and without ℓ2 normalisation (dot similarity) — on the sphere the
  temperatures alone are not enough, removing the normalisation helps (§4.1, Table 2);
* linear DGP and a linear encoder with d_c = 5, d_c = 0, and τ_c < τ_s — the normalised singular values of the
  trained linear map: the style directions collapse when d_c > 0 (Fig. 1 left);
* Table 1 (extra rows): InfoNCE of the trained f against f = g⁻¹ on 10 000 held-out pairs (batches of 1000
  pairs, 1998 negatives each, averaged).

The temperatures are not tuned: τ = 0.5 everywhere, τ_c = 0.2 on the first d_c projector outputs.

The loss follows §4.1: on the sphere InfoNCE with cosine similarity; on the box "an extended InfoNCE objective for
non-normalized representations based on an ℓp norm" (Zimmermann et al. 2021, arXiv:2102.08850), here with
p = 2, the Gaussian kernel exp(−‖z_i − z_j‖²/·) of the paper's linear analysis (App. C, Lemma 5) — the box and
linear runs use ``similarity=neg_lp``. (Before 2026-12 the box runs used the cosine similarity of the sphere.)

The ``long`` scale trains 3× longer (4500 steps).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pandas as pd
import torch

from ...data import build_dataset
from ...formats import load_checkpoint
from ...methods.losses import info_nce
from ..base import Context, Finding, Recipe, RunSpec, pick, register_recipe, rows, spread

D, DC = 10, 5
TAU = 0.5
TAU_SPLIT = [0.2] * DC + [TAU] * (D - DC)
TABLE1_BATCH = 1000  # pairs per InfoNCE evaluation in Table 1


def _data(space: str, dc: int, mixing: str = "mlp") -> Dict[str, Any]:
    return {"name": "dgp", "space": space, "latent_dim": D, "content_dims": dc, "style_spread": 0.25,
            "mix_layers": 2, "mixing": mixing, "eval_size": 5000}


#: The box's loss (§4.1): un-normalised InfoNCE on −‖z − z'‖₂² (Zimmermann et al. 2021; App. C, Lemma 5).
BOX_LOSS = {"method.similarity": "neg_lp", "method.p": 2.0}


def _nonlinear(steps: int, batch: int) -> Dict[str, Any]:
    return {"backbone.width": 64, "backbone.depth": 4, "projector.kind": "mlp", "projector.hidden_dim": 64,
            "projector.out_dim": D, "projector.layers": 3, "projector.bn": True, "optim.lr": 3e-3,
            "train.batch_size": batch, "train.steps": steps, "train.save_every_steps": steps, "method.temperature": TAU}


def _linear(steps: int, batch: int) -> Dict[str, Any]:
    return {"backbone.width": D, "backbone.depth": 1, "backbone.slope": 1.0, "backbone.bias": False,
            "projector": "none", "optim.lr": 3e-3, "train.batch_size": batch, "train.steps": steps,
            "train.save_every_steps": steps, "method.temperature": TAU}


#: Why per-coordinate temperatures need not restore style (the evidence of the findings that test them).
_WHY_TAU = ("Why it does not hold here: the recipe gives τ_c to the first d_c output coordinates, but the output "
            "coordinates of a map trained from a random initialisation are not the latents, and the paper does not say "
            "how its runs chose them. With the un-normalised InfoNCE a per-coordinate temperature on a network ending in "
            "a linear layer W is the loss of the same network with W's rows rescaled by τ^(-1/2) at τ = 1 (an identity, "
            "tested in tests/test_reproduce.py): the function class is unchanged and training can absorb the "
            "temperatures into W instead of reweighting content against style. Prop. 3 rescales the gradient along the "
            "content latents (the D of App. C), which per-coordinate temperatures do only if the coordinates are the "
            "latents. A setting the paper leaves open, not scale: the same at the cpu and long scales.")


@register_recipe
class RusakContentStyle(Recipe):
    name = "rusak-content-style"
    title = "Content suppresses style (Rusak et al. 2022)"
    paper = "Rusak, Reizinger, Zimmermann et al. 2022, 'Content suppresses style', §4.1, Fig. 1, Tables 1–2"
    summary = "SimCLR on the content/style DGP: style collapses only in the projector when d_c > 0; τ_c < τ_s and dropping ℓ2 normalisation alleviate it"

    def runs(self, scale: str) -> List[RunSpec]:
        steps = pick(scale, 40, 1500, 20000, long=4500)
        batch = pick(scale, 64, 512, 6144)
        seeds = pick(scale, (0,), (0, 1, 2), (0, 1, 2))
        nl, lin = _nonlinear(steps, batch), {**_linear(steps, batch), **BOX_LOSS}
        box = {**nl, **BOX_LOSS}
        an = ("identifiability", "spectrum")
        out = [
            RunSpec("box-dc5", "simclr", _data("box", DC), box, seeds=seeds, analyzers=an, tags={"space": "box", "d_c": DC}),
            RunSpec("box-dc0", "simclr", _data("box", 0), box, analyzers=an, tags={"space": "box", "d_c": 0}),
            RunSpec("box-dc5-tau", "simclr", _data("box", DC), {**box, "method.temperature": TAU_SPLIT}, analyzers=an,
                    tags={"space": "box", "d_c": DC}),
            RunSpec("sphere-dc5", "simclr", _data("sphere", DC), nl, analyzers=an, tags={"space": "sphere", "d_c": DC}),
            RunSpec("sphere-dc5-tau", "simclr", _data("sphere", DC), {**nl, "method.temperature": TAU_SPLIT},
                    analyzers=an, tags={"space": "sphere", "d_c": DC}),
            RunSpec("sphere-dc5-tau-nonorm", "simclr", _data("sphere", DC),
                    {**nl, "method.temperature": TAU_SPLIT, "method.similarity": "dot"}, analyzers=an,
                    tags={"space": "sphere", "d_c": DC}),
            RunSpec("linear-dc5", "simclr", _data("box", DC, "linear"), lin, analyzers=("spectrum",),
                    tags={"space": "box", "d_c": DC}),
            RunSpec("linear-dc0", "simclr", _data("box", 0, "linear"), lin, analyzers=("spectrum",),
                    tags={"space": "box", "d_c": 0}),
            RunSpec("linear-dc5-tau", "simclr", _data("box", DC, "linear"), {**lin, "method.temperature": TAU_SPLIT},
                    analyzers=("spectrum",), tags={"space": "box", "d_c": DC}),
        ]
        return out

    # -- Table 1: the loss of f = g⁻¹ against the trained f ------------------------------------------------
    def extra(self, scale: str, ctx: Context) -> List[Dict[str, Any]]:
        out: List[Dict[str, Any]] = []
        n = pick(scale, 500, 10000, 10000)
        for run in ("box-dc5", "box-dc0"):
            for seed, run_dir in ctx.run_dirs.get(run, {}).items():
                model = load_checkpoint(run_dir / "last.pt")
                ds = build_dataset(model.dataset)
                rng = np.random.default_rng([seed, 99])
                s = ds.sample(n, rng)
                pos = ds.augment(s, rng)
                t = model.config["method"]["temperature"]
                sim = model.config["method"]["similarity"]
                with torch.no_grad():
                    model.bundle.eval()
                    z1, z2 = model.bundle(s.x)["z"].double(), model.bundle(pos)["z"].double()
                    inv1 = torch.from_numpy(ds.g_inverse(s.x.cpu().numpy().astype(np.float64)))
                    inv2 = torch.from_numpy(ds.g_inverse(pos.cpu().numpy().astype(np.float64)))
                    # InfoNCE over batches of TABLE1_BATCH pairs (2B − 2 negatives each), averaged over the n pairs
                    cuts = range(0, n, TABLE1_BATCH)
                    trained = float(np.mean([float(info_nce(z1[i:i + TABLE1_BATCH], z2[i:i + TABLE1_BATCH], t, sim)) for i in cuts]))
                    inverse = float(np.mean([float(info_nce(inv1[i:i + TABLE1_BATCH], inv2[i:i + TABLE1_BATCH], t, sim)) for i in cuts]))
                for metric, v in (("loss_trained", trained), ("loss_g_inverse", inverse)):
                    out.append({"source": str(run_dir / "last.pt"), "step": model.step, "method": "simclr",
                                "layer": "projector", "view": "", "analyzer": "table1", "metric": metric,
                                "index": "", "value": v, "run": run, "seed": seed})
        return out

    # -- findings ---------------------------------------------------------------------------------------------
    @staticmethod
    def _r2(table: pd.DataFrame, run: str) -> pd.DataFrame:
        """Per seed and layer: mean content / style R² (over views)."""
        r = rows(table, "identifiability", ["r2_content_mean", "r2_style_mean"], run=run)
        if r.empty:
            return pd.DataFrame()
        return r.pivot_table(index=["seed", "layer"], columns="metric", values="value", aggfunc="mean")

    def _collapse(self, table: pd.DataFrame, run: str) -> Dict[str, List[float]]:
        piv = self._r2(table, run)
        out: Dict[str, List[float]] = {"style_encoder": [], "style_projector": [], "content_min": [], "content_projector": []}
        if piv.empty:
            return out
        for seed, g in piv.groupby(level=0):
            g = g.droplevel(0).reindex(columns=["r2_content_mean", "r2_style_mean"])  # d_c = 0: no content column
            enc = [l for l in g.index if l == "encoder" or l.startswith("encoder.")]
            hidden = [l for l in g.index if l.startswith("projector.")]
            out["style_encoder"].append(float(g.loc[enc, "r2_style_mean"].mean()))
            out["style_projector"].append(float(g.loc["projector", "r2_style_mean"]))
            out["content_min"].append(float(g.loc[enc + hidden, "r2_content_mean"].min()))
            out["content_projector"].append(float(g.loc["projector", "r2_content_mean"]))
        return out

    @staticmethod
    def _tail(table: pd.DataFrame, run: str) -> float:
        """Mean normalised singular value σ_k/σ_1 of the d − d_c smallest directions of the encoder output."""
        r = rows(table, "spectrum", "sv", run=run, layer="encoder")
        vals = []
        for (_seed, _view), g in r.groupby(["seed", "view"]):
            sv = np.sort(pd.to_numeric(g["value"]).to_numpy())[::-1]
            if sv.size and sv[0] > 0:
                vals.append(float(np.mean(sv[DC:] / sv[0])))
        return float(np.mean(vals)) if vals else float("nan")

    def findings(self, table: pd.DataFrame, scale: str) -> List[Finding]:
        f: List[Finding] = []
        c = self._collapse(table, "box-dc5")
        m = {k: float(np.mean(v)) if v else float("nan") for k, v in c.items()}
        held = m["style_encoder"] >= 0.5 and m["style_projector"] <= 0.25 * m["style_encoder"] and m["content_min"] >= 0.5
        f.append(Finding("With content present (d_c = 5), style latents are readable in the encoder and collapse only in the projector",
                         "Rusak et al. 2022 §4.1, Fig. 1 (middle)",
                         {"style R² encoder layers (mean ± std over seeds)": spread(c["style_encoder"]),
                          "style R² projector output": spread(c["style_projector"]),
                          "content R² min over encoder + projector hidden layers": spread(c["content_min"]),
                          "content R² projector output": spread(c["content_projector"])}, held,
                         "" if held or not m["style_encoder"] > 0 else
                         f"Why it does not hold here: the style R² at the projector output is "
                         f"{m['style_projector'] / m['style_encoder']:.0%} of the encoder's (the verdict needs at most "
                         "25 %): with the paper's un-normalised InfoNCE on the box the collapse is partial at this "
                         "scale, while content stays readable. App. C's linear analysis has the style directions fall "
                         "behind at an exponential rate in training time, so it deepens with longer training."))
        c0 = self._collapse(table, "box-dc0")
        s0 = float(np.mean(c0["style_projector"])) if c0["style_projector"] else float("nan")
        f.append(Finding("Without content (d_c = 0), style is not collapsed at the projector output",
                         "Rusak et al. 2022 §3–4.1 (collapse needs at least one content latent)",
                         {"style R² projector, d_c = 0": s0, "style R² projector, d_c = 5": m["style_projector"]},
                         bool(s0 >= 0.5 and s0 > m["style_projector"] + 0.2)))
        ct = self._collapse(table, "box-dc5-tau")
        st = float(np.mean(ct["style_projector"])) if ct["style_projector"] else float("nan")
        held = bool(st > m["style_projector"] + 0.1)
        f.append(Finding("Per-dimension temperatures τ_c < τ_s alleviate the collapse (box)",
                         "Rusak et al. 2022 §3 (Prop. 3), Fig. 1 (middle, dashed)",
                         {"style R² projector, τ_c = τ_s": m["style_projector"], "style R² projector, τ_c < τ_s": st,
                          "τ_c / τ_s": f"{TAU_SPLIT[0]} / {TAU}"}, held,
                         "" if held else _WHY_TAU + f" Here: style R² at the projector {st:.3g} with τ_c < τ_s, "
                         f"{m['style_projector']:.3g} without."))
        sp = {run: self._collapse(table, run) for run in ("sphere-dc5", "sphere-dc5-tau", "sphere-dc5-tau-nonorm")}
        spm = {run: (float(np.mean(v["style_projector"])) if v["style_projector"] else float("nan")) for run, v in sp.items()}
        f.append(Finding("On the sphere, removing the ℓ2 normalisation (with τ_c < τ_s) recovers more style after the projector",
                         "Rusak et al. 2022 §4.1, Table 2",
                         {"style R² projector, sphere τ_c = τ_s": spm["sphere-dc5"],
                          "… τ_c < τ_s": spm["sphere-dc5-tau"], "… τ_c < τ_s without ℓ2 normalisation": spm["sphere-dc5-tau-nonorm"]},
                         bool(spm["sphere-dc5-tau-nonorm"] > max(spm["sphere-dc5"], spm["sphere-dc5-tau"]) + 0.05)))
        t5, t0, tt = self._tail(table, "linear-dc5"), self._tail(table, "linear-dc0"), self._tail(table, "linear-dc5-tau")
        # "restores": at least a tenth of the way back to the d_c = 0 spectrum, not a difference in the last digits
        held = bool(t5 < 0.5 * t0 and tt - t5 > 0.1 * (t0 - t5))
        f.append(Finding("Linear model: the style directions of the trained linear map collapse when d_c > 0, and τ_c < τ_s restores them",
                         "Rusak et al. 2022 Fig. 1 (left)",
                         {"mean σ_k/σ_1 of the 5 smallest directions, d_c = 5": t5, "… d_c = 0": t0, "… d_c = 5, τ_c < τ_s": tt,
                          "share of the gap to d_c = 0 restored by τ_c < τ_s (held: > 0.1)": (tt - t5) / (t0 - t5) if t0 != t5 else float("nan")},
                         held, "" if held or not t5 < 0.5 * t0 else _WHY_TAU + f" Here: mean σ_k/σ_1 of the 5 smallest "
                         f"directions {tt:.4g} with τ_c < τ_s, {t5:.4g} without, {t0:.4g} with d_c = 0."))
        t1 = rows(table, "table1", ["loss_trained", "loss_g_inverse"])
        if not t1.empty:
            piv = t1.pivot_table(index="run", columns="metric", values="value", aggfunc="mean")
            nums = {f"{run}: {k}": float(piv.loc[run, k]) for run in piv.index for k in piv.columns}
            held = "box-dc5" in piv.index and piv.loc["box-dc5", "loss_trained"] < piv.loc["box-dc5", "loss_g_inverse"]
            f.append(Finding("With content present, the trained (collapsed) encoder reaches a lower InfoNCE than f = g⁻¹",
                             "Rusak et al. 2022 Table 1, Prop. 4", nums, bool(held)))
        return f

    def figures(self, table: pd.DataFrame, out: Path) -> List[Path]:
        from ...report import _plt, _save

        plt = _plt()
        runs = [r for r in ("box-dc5", "box-dc0", "box-dc5-tau", "sphere-dc5", "sphere-dc5-tau", "sphere-dc5-tau-nonorm")
                if not self._r2(table, r).empty]
        paths: List[Path] = []
        if runs:
            fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 3.2), squeeze=False, sharey=True)
            for ax, run in zip(axes[0], runs):
                piv = self._r2(table, run).groupby(level=1, sort=False).mean().reindex(columns=["r2_content_mean", "r2_style_mean"])
                order = list(dict.fromkeys(rows(table, "identifiability", "r2_style_mean", run=run)["layer"]))
                piv = piv.reindex(order)
                x = np.arange(len(order))
                ax.plot(x, piv["r2_content_mean"], "-o", ms=3, label="content")
                ax.plot(x, piv["r2_style_mean"], "--o", ms=3, label="style")
                ax.set_xticks(x, order, rotation=60, ha="right", fontsize=6)
                ax.set_title(run, fontsize=8)
                ax.set_ylim(-0.1, 1.05)
            axes[0][0].set_ylabel("adjusted R² (linear readout)")
            axes[0][0].legend(fontsize=7)
            fig.suptitle("Rusak et al. 2022 Fig. 1: R² of content and style latents per layer")
            paths += _save(fig, out, "fig1_r2_per_layer", ("png", "pdf"))
        lin = [r for r in ("linear-dc5", "linear-dc0", "linear-dc5-tau") if not rows(table, "spectrum", "sv", run=r).empty]
        if lin:
            fig, ax = plt.subplots(figsize=(4, 3.2))
            for run in lin:
                g = rows(table, "spectrum", "sv", run=run, layer="encoder")
                g = g[g["view"] == g["view"].iloc[0]]
                sv = g.groupby("index", sort=False)["value"].mean().to_numpy()
                sv = np.sort(sv)[::-1]
                ax.plot(np.arange(1, len(sv) + 1), sv / sv[0], "-o", ms=3, label=run)
            ax.set_xlabel("k")
            ax.set_ylabel("σ_k / σ_1")
            ax.set_title("Rusak et al. 2022 Fig. 1 (left): linear model spectrum", fontsize=9)
            ax.legend(fontsize=7)
            paths += _save(fig, out, "fig1_linear_spectrum", ("png", "pdf"))
        return paths
