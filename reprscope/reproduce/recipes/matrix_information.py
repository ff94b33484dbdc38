"""Tan et al. 2024: information flow in self-supervised learning, measured with matrix information.

* Fig. 1–3: SimCLR, Barlow Twins, BYOL and the spectral contrastive loss analyzed over their checkpoint
  trajectories: matrix mutual information and joint entropy (α = 1) between the two branches rise during
  training; matrix JS and eigenvalue JS between the branches.
* Thm. 4.3 / 4.13 (α = 2): the lower bounds on I₂ and on the joint entropy H₂ given by the spectral contrastive
  loss (Gram form, batch B) and the Barlow Twins loss (covariance form, d features), evaluated at every
  checkpoint with the losses written exactly as the paper's Eq. 2–3 (rows / columns ℓ2-normalised, sums) on
  held-out batches.
* §5 / Table 2: effective rank of the encoder's representation for MAE, U-MAE and M-MAE (tiny ViT at the cpu
  scale).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pandas as pd
import torch

from ..base import Context, Finding, Recipe, RunSpec, last_step, pick, register_recipe, rows, spread
from .common import image_setting

METHODS = ("simclr", "barlowtwins", "byol", "spectral")
MAES = ("mae", "umae", "mmae")


def _fro2(k: np.ndarray) -> float:
    return float(np.sum(k * k))


def alpha2_information(k1: np.ndarray, k2: np.ndarray) -> Dict[str, float]:
    """I₂ and the joint H₂ of two m×m kernels with unit diagonals (Tan et al. 2024 (ICML) Prop. 4.1 / 4.12)."""
    m = k1.shape[0]
    joint = _fro2(k1 * k2)
    return {"mi2": 2 * math.log(m) - math.log(_fro2(k1) * _fro2(k2) / joint), "h2": 2 * math.log(m) - math.log(joint)}


def sc_bounds(z1: np.ndarray, z2: np.ndarray, lam: float = 1.0) -> Dict[str, float]:
    """Thm. 4.3 / 4.13 (1): spectral contrastive loss (Eq. 2, rows ℓ2-normalised) of a batch of B rows and the
    bounds it gives on I₂ and H₂ of the Gram matrices."""
    z1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
    z2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    b = z1.shape[0]
    cross = (z1 @ z2.T) ** 2
    np.fill_diagonal(cross, 0.0)
    loss = float(np.sum((z1 - z2) ** 2) + lam * cross.sum())
    c = 1 + (2 + 2 / (b * lam)) * loss
    return {"loss_sc": loss, **alpha2_information(z1 @ z1.T, z2 @ z2.T),
            "mi2_bound": math.log(b) - 2 * math.log(c), "h2_bound": math.log(b) - math.log(c)}


def bt_bounds(z1: np.ndarray, z2: np.ndarray, lam: float = 5e-3) -> Dict[str, float]:
    """Thm. 4.3 / 4.13 (2): Barlow Twins loss (Eq. 3, columns ℓ2-normalised) of d features and the bounds it
    gives on I₂ and H₂ of the covariance matrices."""
    z1 = z1 / np.linalg.norm(z1, axis=0, keepdims=True)
    z2 = z2 / np.linalg.norm(z2, axis=0, keepdims=True)
    d = z1.shape[1]
    cmat = z1.T @ z2
    off = cmat ** 2
    np.fill_diagonal(off, 0.0)
    loss = float(np.sum((1 - np.diag(cmat)) ** 2) + lam * off.sum())
    c = 1 + 2 / (d * lam) * loss + 4 * math.sqrt(d * loss)
    return {"loss_bt": loss, **alpha2_information(z1.T @ z1, z2.T @ z2),
            "mi2_bound": math.log(d) - 2 * math.log(c), "h2_bound": math.log(d) - math.log(c)}


#: The methods of Tan et al. 2024's Fig. 5 (matrix and eigenvalue JS between the branches).
JS_FIGURE_METHODS = ("simclr", "barlowtwins", "byol")


@register_recipe
class MatrixInformation(Recipe):
    name = "matrix-information"
    title = "Information flow in SSL, measured with matrix information (Tan et al. 2024)"
    paper = "Tan et al. 2024, arXiv:2309.17281, Fig. 1–5, Thm. 4.3 / 4.13, §5"
    summary = "Matrix mutual information and joint entropy rise during training; the α = 2 loss bounds hold; M-MAE raises the effective rank"

    def runs(self, scale: str) -> List[RunSpec]:
        data, backbone, sets = image_setting(scale, self.data_root, "cifar10")
        d = pick(scale, 16, 64, 2048)
        an = ("matrix_information", "spectrum")
        params = {"matrix_information": {"alpha": 1.0, "batch_size": pick(scale, 64, 256, 512), "max_batches": 4}}
        out = []
        for m in METHODS:
            heads = {"projector.hidden_dim": d, "projector.out_dim": d}
            if m == "byol":
                heads.update({"predictor.hidden_dim": d, "predictor.out_dim": d})
            out.append(RunSpec(m, m, dict(data), {**sets, **heads}, backbone=backbone, checkpoints="all",
                               analyzers=an, params=params, layers=("encoder", "projector"), tags={"family": "siamese"}))
        vit = {"backbone.patch_size": 4, "backbone.embed_dim": pick(scale, 32, 64, 192), "backbone.depth": pick(scale, 1, 2, 12),
               "backbone.num_heads": pick(scale, 2, 2, 3), "method.decoder_dim": pick(scale, 32, 64, 128),
               "method.decoder_depth": 1 if scale != "gpu" else 4, "method.decoder_heads": 2 if scale != "gpu" else 4}
        msets = {k: v for k, v in sets.items() if not k.startswith("backbone.")}
        if scale != "gpu":
            msets.update({"optim.lr": 1e-3, "optim.lr_scaling": None, "train.steps": sets["train.steps"],
                          "optim.warmup_epochs": None})
        for m in MAES:
            out.append(RunSpec(m, m, dict(data), {**msets, **vit}, backbone="vit_tiny_patch16_224",
                               analyzers=("spectrum", "matrix_information"), params=params, layers=("encoder",),
                               tags={"family": "mae"}))
        return out

    def extra(self, scale: str, ctx: Context) -> List[Dict[str, Any]]:
        """The α = 2 bounds at every checkpoint of the spectral-contrastive and Barlow Twins runs."""
        from ...data import build_dataset
        from ...formats import load_checkpoint

        out: List[Dict[str, Any]] = []
        b = pick(scale, 32, 256, 512)
        n_batches = pick(scale, 1, 4, 8)
        for run, fn, kw in (("spectral", sc_bounds, {}), ("barlowtwins", bt_bounds, {})):
            for seed, run_dir in ctx.run_dirs.get(run, {}).items():
                for ck in sorted(run_dir.glob("ckpt-*.pt")):
                    model = load_checkpoint(ck)
                    ds = build_dataset(model.dataset)
                    rng = np.random.default_rng([seed, 7])
                    model.bundle.eval()
                    vals: Dict[str, List[float]] = {}
                    for _ in range(n_batches):
                        s = ds.sample(b, rng)
                        with torch.no_grad():
                            z1 = model.bundle(ds.augment(s, rng, view=0))["z"].double().cpu().numpy()
                            z2 = model.bundle(ds.augment(s, rng, view=1))["z"].double().cpu().numpy()
                        if fn is bt_bounds:
                            kw = {"lam": float(model.config["method"].get("lambd", 5e-3))}
                        for k, v in fn(z1, z2, **kw).items():
                            vals.setdefault(k, []).append(v)
                    for k, v in vals.items():
                        out.append({"source": str(ck), "step": model.step, "method": run, "layer": "projector",
                                    "view": "aug1|aug2", "analyzer": "alpha2_bounds", "metric": k, "index": "",
                                    "value": float(np.mean(v)), "run": run, "seed": seed})
        return out

    @staticmethod
    def _traj(table: pd.DataFrame, run: str, metric: str, form: str = "cov", layer: str = "projector") -> pd.Series:
        r = rows(table, "matrix_information", metric, run=run, layer=layer)
        if "form" in r:
            r = r[r["form"].astype(str) == form]
        if r.empty:
            return pd.Series(dtype=float)
        return r.assign(step=pd.to_numeric(r["step"])).groupby("step")["value"].mean().sort_index()

    def findings(self, table: pd.DataFrame, scale: str) -> List[Finding]:
        f: List[Finding] = []
        for metric, claim, src in (("mutual_information", "Matrix mutual information between the branches rises during training",
                                    "Tan et al. 2024 Fig. 1"),
                                   ("joint_entropy", "Matrix joint entropy of the branches rises during training",
                                    "Tan et al. 2024 Fig. 3")):
            nums, ok = {}, []
            for m in METHODS:
                s = self._traj(table, m, metric)
                if len(s) >= 2:
                    nums[f"{m}: init → end (α = 1, covariance form)"] = f"{s.iloc[0]:.3f} → {s.iloc[-1]:.3f}"
                    ok.append(s.iloc[-1] > s.iloc[0])
            f.append(Finding(claim, src, nums, bool(ok) and all(ok)))
        nums, ok = {}, []
        for run, loss in (("spectral", "loss_sc"), ("barlowtwins", "loss_bt")):
            r = rows(table, "alpha2_bounds", ["mi2", "mi2_bound", "h2", "h2_bound", loss], run=run)
            if r.empty:
                continue
            piv = r.assign(step=pd.to_numeric(r["step"])).pivot_table(index="step", columns="metric", values="value")
            ok.append(bool((piv["mi2"] >= piv["mi2_bound"] - 1e-9).all() and (piv["h2"] >= piv["h2_bound"] - 1e-9).all()))
            last = piv.iloc[-1]
            nums[f"{run}: end loss (paper's Eq.)"] = float(last[loss])
            nums[f"{run}: I₂ vs bound (end)"] = f"{last['mi2']:.3f} ≥ {last['mi2_bound']:.3f}"
            nums[f"{run}: H₂ vs bound (end)"] = f"{last['h2']:.3f} ≥ {last['h2_bound']:.3f}"
            nums[f"{run}: checkpoints checked"] = len(piv)
        f.append(Finding("The α = 2 lower bounds of Thm. 4.3 (I₂) and 4.13 (H₂) hold at every checkpoint",
                         "Tan et al. 2024 Thm. 4.3, 4.13", nums, bool(ok) and all(ok),
                         "A bound far below zero is vacuous: the paper's losses are sums over the batch, so they are large "
                         "unless the representation is near the optimum."))
        nums, ok = {}, []
        for m in METHODS:
            js, ej = self._traj(table, m, "js"), self._traj(table, m, "eig_js")
            if not (len(js) and len(ej)):
                continue
            judged = m in JS_FIGURE_METHODS
            tag = "" if judged else " (not in the paper's Fig. 5: not judged)"
            nums[f"{m}: matrix JS, first → last checkpoint{tag}"] = f"{js.iloc[0]:.4g} → {js.iloc[-1]:.4g}"
            nums[f"{m}: eigenvalue JS (end){tag}"] = float(ej.iloc[-1])
            if judged:
                ok.append(bool(js.iloc[-1] > js.iloc[0] and ej.iloc[-1] < js.iloc[-1]))
        f.append(Finding("The matrix JS divergence between the branches grows during training, and the eigenvalue JS "
                         "stays below it (SimCLR, Barlow Twins, BYOL)",
                         "Tan et al. 2024 App. C, Fig. 5 (\"the JS divergence increases during training\"; the eigenspace "
                         "JS \"is very small, even compared to\" the matrix JS)", nums, bool(ok) and all(ok) if ok else None))
        er = {}
        for m in MAES:
            r = last_step(rows(table, "spectrum", "effective_rank", run=m, layer="encoder"))
            er[m] = list(r.groupby("seed")["value"].mean()) if not r.empty else []
        mean = {m: float(np.mean(v)) if v else float("nan") for m, v in er.items()}
        f.append(Finding("M-MAE's representation has a higher effective rank than MAE's", "Tan et al. 2024 §5, Table 2",
                         {f"{m}: effective rank (encoder)": spread(v) for m, v in er.items()},
                         bool(mean["mmae"] > mean["mae"])))
        return f

    def figures(self, table: pd.DataFrame, out: Path) -> List[Path]:
        from ...report import _plt, _save

        plt = _plt()
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
        found = False
        for m in METHODS:
            for ax, metric in zip(axes, ("mutual_information", "joint_entropy", "eig_js")):
                s = self._traj(table, m, metric)
                if len(s):
                    found = True
                    ax.plot(s.index, s.values, "-o", ms=3, label=m)
        paths: List[Path] = []
        if found:
            for ax, t in zip(axes, ("matrix MI (Fig. 1)", "matrix joint entropy (Fig. 3)", "eigenvalue JS")):
                ax.set_title(t, fontsize=9)
                ax.set_xlabel("step")
            axes[0].legend(fontsize=7)
            fig.suptitle("Tan et al. 2024: matrix information between the branches over training (α = 1, covariance form)")
            paths += _save(fig, out, "fig1_3_matrix_information", ("png", "pdf"))
        else:
            plt.close(fig)
        b = rows(table, "alpha2_bounds", ["mi2", "mi2_bound"])
        if not b.empty:
            fig, ax = plt.subplots(figsize=(4.5, 3.2))
            for (run, metric), g in b.groupby(["run", "metric"]):
                g = g.assign(step=pd.to_numeric(g["step"])).sort_values("step")
                ax.plot(g["step"], g["value"], "-" if metric == "mi2" else "--", label=f"{run} {metric}")
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
            ax.set_title("Thm. 4.3: I₂ (solid) and its loss bound (dashed)", fontsize=9)
            paths += _save(fig, out, "thm4_3_bounds", ("png", "pdf"))
        return paths
