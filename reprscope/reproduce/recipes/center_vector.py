"""The center-vector paper (ICLR 2024 submission): the center vector s = E[ẑ] explains collapse and its avoidance.

* Toy sets (§3.1–3.2, Fig. 3–4): on blobs and moons (three classes in 2-D; the samples of a class are the
  augmentations of one "image"), SimSiam, SimSiam without predictor, SimSiam without stop-gradient, and the
  simple objective of eq. 32 (invariance − λ_L·‖s‖², λ_L = −1): center-vector norm, residual norms and k-NN
  accuracy over training, 3 seeds at the cpu scale (5 in the paper).
* B.1 (Fig. B.1–B.2): 100 fixed 3-D points, 10 augmentations each, a two-linear-layer map to S² trained with the
  invariance loss alone (``simple`` with λ_L = 0), mini-batch (50) vs batch (1000) SGD, augmentation centred
  (E[x_ω] = x) vs shifted (E[x_ω] = x + k): all collapse; the center-vector norm over training.
* On images (gpu scale; CIFAR-10 from ``--data-root``): DINO with / without centering (B.2), Barlow Twins without
  the off-diagonal term (§3.3), the BYOL momentum sweep (§3.5), the SimSiam predictor learning-rate sweep (B.4).
  At the cpu scale these run on the procedural ``shapes`` images (16×16) with a small CNN for a few hundred
  steps: they show whether each run collapses, not the papers' accuracies.

Toy hyper-parameters (the paper does not give them): MLP encoder 2 × 64, projector 2 × 64 → 32 without an
output BatchNorm, predictor 16-wide, AdamW 1e-3, batch 128. (Until 2026-12 the toy projector ended in SimSiam's
affine-free BatchNorm, which centres the outputs of every batch and so removed the very center vector the
findings measure: SimSiam without predictor then ended at ‖s‖ ≈ 0.1 on moons instead of 0.96.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pandas as pd

from ..base import Finding, Recipe, RunSpec, last_step, pick, register_recipe, rows, spread
from .common import image_setting

def _clearly_larger(a: List[float], b: List[float]) -> bool:
    """mean(a) > mean(b) by more than the larger of the two seed standard deviations (plain > for one seed)."""
    if not a or not b:
        return False
    sd = max(np.std(a, ddof=1) if len(a) > 1 else 0.0, np.std(b, ddof=1) if len(b) > 1 else 0.0)
    return float(np.mean(a) - np.mean(b)) > sd


TOY_VARIANTS = {
    "simsiam": {},
    "simsiam-no-predictor": {"predictor": "none"},
    "simsiam-no-stopgrad": {"method.stop_gradient": False},
}


def _toy_sets(steps: int) -> Dict[str, Any]:
    # No BatchNorm on the projector's output: in training it subtracts the batch mean of the outputs — the
    # numerator of the center vector — so no variant could end with a large ‖s‖ (with it, SimSiam without
    # predictor ended at ‖s‖ ≈ 0.1 on moons; without, at 0.96). The paper does not give its toy architecture.
    return {"backbone.width": 64, "backbone.depth": 2, "projector.hidden_dim": 64, "projector.out_dim": 32,
            "projector.layers": 2, "projector.last_bn": False, "optim.lr": 1e-3, "train.batch_size": 128, "train.steps": steps,
            "train.save_every_steps": max(1, steps // 6), "train.knn_every": 0, "data.eval_size": 900}


@register_recipe
class CenterVector(Recipe):
    name = "center-vector"
    title = "The center vector and collapse (\"A unifying framework for the stability of SSL: the center vector\", ICLR 2024 submission)"
    paper = "'A unifying framework for the stability of SSL: the center vector' (ICLR 2024 submission), §3.1–3.5, B.1–B.4"
    summary = "SimSiam without predictor / stop-gradient collapses with a large center vector; the simple objective (eq. 32) works; invariance-only training collapses faster with mini-batches"

    def runs(self, scale: str) -> List[RunSpec]:
        steps = pick(scale, 30, 600, 3000, long=3000)
        seeds = pick(scale, (0,), (0, 1, 2), (0, 1, 2, 3, 4))
        toy = _toy_sets(steps)
        an = ("center", "knn")
        params = {"knn": {"ks": "20"}}
        layers = ("encoder", "projector")
        out: List[RunSpec] = []
        for data in ("blobs", "moons"):
            for variant, sets in TOY_VARIANTS.items():
                s = dict(toy)
                if "predictor" not in sets:
                    s.update({"predictor.hidden_dim": 16, "predictor.out_dim": 32})
                s.update(sets)
                out.append(RunSpec(f"{data}-{variant}", "simsiam", {"name": data}, s, seeds=seeds, checkpoints="all",
                                   analyzers=an, params=params, layers=layers, tags={"toy": data, "variant": variant}))
            out.append(RunSpec(f"{data}-simple", "simple", {"name": data}, {**toy, "method.lagrange": -1.0}, seeds=seeds,
                               checkpoints="all", analyzers=an, params=params, layers=layers,
                               tags={"toy": data, "variant": "simple"}))
        # B.1: invariance only on 3-D points mapped to S²
        epochs_mini, epochs_batch = pick(scale, (4, 4), (200, 500), (200, 500))
        for shift_name, shift in (("centred", 0.0), ("shifted", 1.0)):
            for opt_name, batch, epochs in (("minibatch", 50, epochs_mini), ("batch", 1000, epochs_batch)):
                sets = {"backbone.width": 16, "backbone.depth": 1, "backbone.slope": 1.0, "projector.kind": "linear",
                        "projector.out_dim": 3, "projector.bias": True, "method.lagrange": 0.0, "optim.name": "sgd",
                        "optim.lr": 0.05, "optim.momentum": 0.0, "optim.weight_decay": 0.0, "optim.schedule": "constant",
                        "train.batch_size": batch, "train.epochs": epochs, "train.save_every": max(1, epochs // 10),
                        "train.knn_every": 0, "data.shift": shift}
                out.append(RunSpec(f"b1-{opt_name}-{shift_name}", "simple", {"name": "points3d"}, sets, checkpoints="all",
                                   analyzers=("center",), layers=("projector",),
                                   tags={"b1_optimizer": opt_name, "b1_augmentation": shift_name}))
        out += self._image_runs(scale)
        return out

    def _image_runs(self, scale: str) -> List[RunSpec]:
        if scale == "tiny":
            return []
        data, backbone, common = image_setting(scale, self.data_root, "cifar10")
        if scale == "gpu":
            common.update({"train.epochs": 200, "train.save_every": 20, "optim.warmup_epochs": 10})
        else:
            if scale == "long":  # ten image runs: 5× the cpu steps keeps the recipe within 30 minutes on 2 cores
                common.update({"train.steps": 1200, "train.save_every_steps": 300})
            common.update({"projector.hidden_dim": 256, "projector.out_dim": 64})
        seeds = (0,)
        dino = {"projector.out_dim": 1024, "projector.bottleneck_dim": 64, "projector.bn": True} if scale in ("cpu", "long") else {}
        if scale in ("cpu", "long"):
            dino["projector.hidden_dim"] = 256
        pred = {"predictor.hidden_dim": 64, "predictor.out_dim": 64} if scale in ("cpu", "long") else {}
        an, layers = ("center", "knn", "spectrum"), ("encoder", "projector")
        params = {"knn": {"ks": "20"}}
        spec = lambda name, method, sets, tags: RunSpec(name, method, data, {**common, **sets}, backbone=backbone,  # noqa: E731
                                                        seeds=seeds, checkpoints="all", analyzers=an, params=params,
                                                        layers=layers, tags={"image": True, **tags})
        out = [spec("dino-centering", "dino", dino, {"variant": "centering"}),
               spec("dino-no-centering", "dino", {"method.centering": False, **dino}, {"variant": "no-centering"}),
               spec("barlow", "barlowtwins", {}, {"variant": "off-diagonal"}),
               spec("barlow-no-offdiag", "barlowtwins", {"method.off_diagonal": False}, {"variant": "no-off-diagonal"})]
        for m in pick(scale, (), (0.0, 0.99, 1.0), (0.0, 0.9, 0.99, 0.996, 1.0)):
            out.append(spec(f"byol-m{m:g}", "byol", {**pred, "method.momentum": m, "method.momentum_schedule": "constant"},
                            {"byol_momentum": m}))
        for mult in pick(scale, (), (0.1, 1.0, 10.0), (0.1, 1.0, 10.0)):
            out.append(spec(f"simsiam-predlr{mult:g}", "simsiam", {**pred, "method.predictor_lr_mult": mult},
                            {"predictor_lr_mult": mult}))
        return out

    # -- findings -------------------------------------------------------------------------------------------
    @staticmethod
    def _final(table: pd.DataFrame, run: str, analyzer: str, metric: str, layer: str = "projector") -> List[float]:
        r = last_step(rows(table, analyzer, metric, run=run, layer=layer))
        if r.empty:
            return []
        return list(r.groupby("seed")["value"].mean())

    def findings(self, table: pd.DataFrame, scale: str) -> List[Finding]:
        f: List[Finding] = []
        for data in ("blobs", "moons"):
            nums: Dict[str, Any] = {}
            norms, knns = {}, {}
            for v in ("simsiam", "simsiam-no-predictor", "simsiam-no-stopgrad", "simple"):
                norms[v] = self._final(table, f"{data}-{v}", "center", "center_norm")
                knns[v] = self._final(table, f"{data}-{v}", "knn", "top1", layer="encoder")
                nums[f"{v}: ‖s‖ (projector, end)"] = spread(norms[v])
                nums[f"{v}: 20-NN accuracy (encoder, end)"] = spread(knns[v])
            held = all(_clearly_larger(norms[v], norms["simsiam"]) for v in ("simsiam-no-predictor", "simsiam-no-stopgrad"))
            f.append(Finding(f"{data}: SimSiam without predictor and without stop-gradient end with a larger center vector than SimSiam",
                             "the center-vector paper §3.2, Fig. 4", nums, bool(held),
                             "Held means larger by more than the seed-to-seed standard deviation of either run."))
            k = {v: float(np.mean(x)) if x else float("nan") for v, x in knns.items()}
            f.append(Finding(f"{data}: the simple objective (eq. 32) reaches at least SimSiam's k-NN accuracy",
                             "the center-vector paper §3.1, Fig. 3",
                             {"simple": spread(knns["simple"]), "simsiam": spread(knns["simsiam"])},
                             bool(k["simple"] >= k["simsiam"] - 0.01)))
        b1 = {}
        for opt in ("minibatch", "batch"):
            for aug in ("centred", "shifted"):
                r = rows(table, "center", "center_norm", run=f"b1-{opt}-{aug}", layer="projector")
                if r.empty:
                    continue
                r = r.assign(step=pd.to_numeric(r["step"])).groupby("step")["value"].mean().sort_index()
                epoch = r.index.to_numpy() / (1000 / (50 if opt == "minibatch" else 1000))
                b1[(opt, aug)] = pd.Series(r.to_numpy(), index=epoch)
        if b1:
            final = {k: float(v.iloc[-1]) for k, v in b1.items()}
            nums = {f"‖s‖ at the end, {o} / {a}": v for (o, a), v in final.items()}
            f.append(Finding("Invariance-only training collapses in all four B.1 settings (‖s‖ → 1)",
                             "the center-vector paper B.1, Fig. B.1", nums, bool(min(final.values()) >= 0.9)))
            early, at = {}, {}
            for (o, a), s in b1.items():
                e = s[s.index > 0]
                early[(o, a)] = float(e.iloc[0]) if len(e) else float("nan")
                at[(o, a)] = float(e.index[0]) if len(e) else float("nan")
            nums = {f"‖s‖ at the first checkpoint after init (epoch {at[(o, a)]:g}), {o} / {a}": v for (o, a), v in early.items()}
            held = all(early.get(("minibatch", a), np.nan) > early.get(("batch", a), np.nan) for a in ("centred", "shifted"))
            f.append(Finding("Mini-batch SGD drives the center vector up faster than batch SGD",
                             "the center-vector paper B.1, Fig. B.1", nums, bool(held)))
        img = [r for r in ("dino-centering", "dino-no-centering") if not rows(table, "center", "center_norm", run=r).empty]
        if len(img) == 2:
            a = self._final(table, "dino-centering", "center", "center_norm")
            b = self._final(table, "dino-no-centering", "center", "center_norm")
            ka = self._final(table, "dino-centering", "knn", "top1", "encoder")
            kb = self._final(table, "dino-no-centering", "knn", "top1", "encoder")
            f.append(Finding("DINO without centering ends with a larger center vector (collapse) than with centering",
                             "the center-vector paper B.2", {"‖s‖ with centering": spread(a), "‖s‖ without": spread(b),
                                               "k-NN with centering": spread(ka), "k-NN without": spread(kb)},
                             bool(np.mean(b) > np.mean(a))))
        if not rows(table, "knn", "top1", run="barlow-no-offdiag").empty:
            a = self._final(table, "barlow", "knn", "top1", "encoder")
            b = self._final(table, "barlow-no-offdiag", "knn", "top1", "encoder")
            na = self._final(table, "barlow", "center", "center_norm")
            nb = self._final(table, "barlow-no-offdiag", "center", "center_norm")
            f.append(Finding("Barlow Twins still works without the off-diagonal term (k-NN within 5 points, no collapse)",
                             "the center-vector paper §3.3", {"k-NN with off-diagonal": spread(a), "k-NN without": spread(b),
                                                "‖s‖ with": spread(na), "‖s‖ without": spread(nb)},
                             bool(np.mean(b) >= np.mean(a) - 0.05)))
        # The sweeps: the paper states a direction between the two ends of the range it studies; a setting outside
        # that range (a frozen target, m = 1; a predictor faster than the encoder) is reported, not judged.
        sweeps = (("byol-m", "BYOL momentum sweep: the lowest momentum ends with a larger center vector and a lower "
                             "k-NN accuracy than the highest momentum below 1",
                   "the center-vector paper §3.5 (\"lower momentum leads to higher center vector magnitudes, leading to "
                   "instability and low knn-accuracies\")", lambda v: v < 1.0),
                  ("simsiam-predlr", "SimSiam predictor learning-rate sweep: the smallest predictor learning rate ends "
                                     "with a larger center vector and a lower k-NN accuracy than the standard one (×1)",
                   "the center-vector paper B.4 (collapse at a 1 % predictor learning rate, accuracy improving as it "
                   "grows up to 100 %)", lambda v: v <= 1.0))
        for prefix, claim, source, judged in sweeps:
            runs = {float(str(r)[len(prefix):]): str(r) for r in table.get("run", pd.Series(dtype=str)).dropna().unique()
                    if str(r).startswith(prefix)}
            if not runs:
                continue
            nums = {}
            for v in sorted(runs):
                r = runs[v]
                tag = "" if judged(v) else " (outside the paper's range: not judged)"
                nums[f"{r}: ‖s‖{tag}"] = spread(self._final(table, r, "center", "center_norm"))
                nums[f"{r}: k-NN{tag}"] = spread(self._final(table, r, "knn", "top1", "encoder"))
            ends = sorted(v for v in runs if judged(v))
            held = None
            if len(ends) >= 2:
                lo, hi = runs[ends[0]], runs[ends[-1]]
                n_lo, n_hi = self._final(table, lo, "center", "center_norm"), self._final(table, hi, "center", "center_norm")
                k_lo, k_hi = self._final(table, lo, "knn", "top1", "encoder"), self._final(table, hi, "knn", "top1", "encoder")
                if n_lo and n_hi and k_lo and k_hi:
                    held = bool(np.mean(n_lo) > np.mean(n_hi) and np.mean(k_lo) < np.mean(k_hi))
            f.append(Finding(claim, source, nums, held))
        return f

    def figures(self, table: pd.DataFrame, out: Path) -> List[Path]:
        from ...report import _plt, _save

        plt = _plt()
        paths: List[Path] = []
        toy = [d for d in ("blobs", "moons") if not rows(table, "center", "center_norm", toy=d).empty] if "toy" in table else []
        if toy:
            fig, axes = plt.subplots(len(toy), 2, figsize=(8, 3 * len(toy)), squeeze=False)
            for i, data in enumerate(toy):
                for v in ("simsiam", "simsiam-no-predictor", "simsiam-no-stopgrad", "simple"):
                    for j, (an, metric, layer) in enumerate((("center", "center_norm", "projector"), ("knn", "top1", "encoder"))):
                        r = rows(table, an, metric, run=f"{data}-{v}", layer=layer)
                        if r.empty:
                            continue
                        g = r.assign(step=pd.to_numeric(r["step"])).groupby(["step", "seed"])["value"].mean().groupby("step")
                        m, s = g.mean(), g.std().fillna(0)
                        axes[i][j].plot(m.index, m.values, label=v)
                        axes[i][j].fill_between(m.index, m - s, m + s, alpha=0.2)
                axes[i][0].set_ylabel(f"{data}: ‖s‖ (projector)")
                axes[i][1].set_ylabel(f"{data}: 20-NN accuracy")
                axes[i][1].legend(fontsize=7)
            for ax in axes[-1]:
                ax.set_xlabel("step")
            fig.suptitle("The center-vector paper (ICLR 2024 submission) Fig. 3–4: center vector and k-NN accuracy over training")
            paths += _save(fig, out, "fig3_4_toy", ("png", "pdf"))
        b1 = rows(table, "center", "center_norm", layer="projector")
        b1 = b1[b1["run"].astype(str).str.startswith("b1-")] if not b1.empty else b1
        if not b1.empty:
            fig, ax = plt.subplots(figsize=(5, 3.4))
            for run, g in b1.groupby("run"):
                per_epoch = 1000 / (50 if "minibatch" in run else 1000)
                g = g.assign(step=pd.to_numeric(g["step"])).sort_values("step")
                ax.plot(g["step"] / per_epoch, g["value"], "-o", ms=2, label=run[3:])
            ax.set_xlabel("epoch")
            ax.set_ylabel("‖s‖")
            ax.legend(fontsize=7)
            ax.set_title("The center-vector paper (ICLR 2024 submission) Fig. B.1: center-vector magnitude, invariance only", fontsize=9)
            paths += _save(fig, out, "figB1_center_norm", ("png", "pdf"))
        return paths
