"""The method contract: a method is backbone + heads + loss composed, not a class hierarchy per variant.

A method unit declares its hyper-parameters (``--set method.KEY=VALUE``), the heads it needs by default, and
a ``training_step`` that turns a list of views into a loss. Ablations are configuration of the same unit.

Life cycle inside the trainer (one loop for every method, ``train/trainer.py``)::

    bundle = build_bundle(...)            # encoder + projector [+ predictor]
    method.setup(bundle)                  # target / teacher copies, prototypes, queues, centers …
    groups = method.param_groups(bundle)  # optimiser groups (e.g. SimSiam's fixed-lr predictor)
    for step in ...:
        loss, logs = method.training_step(bundle, views, step, total)
        loss.backward(); optimizer.step()
        method.after_step(bundle, step, total)   # EMA updates, schedules

Every method may add the variance / covariance regularisers of VICReg to its embeddings (Bardes et al. 2022, arXiv:2105.04906 Table 3):
``--set method.var_reg=25 --set method.cov_reg=1``; methods call :meth:`Method.regularize` on the embeddings
their loss uses. Under DDP a method computes its loss on the global batch: embeddings are gathered with
gradient through ``reprscope.distributed.gather`` (a no-op on one process), so statistics (Barlow Twins'
cross-correlation, VICReg's covariance, SwAV's Sinkhorn, DINO's center) are those of the whole batch.
"""
from __future__ import annotations

import abc
from typing import Any, ClassVar, Dict, List, Sequence, Tuple

import torch
from torch import nn

from ..params import Param, resolve_params
from ..registry import Registry

METHODS: Registry = Registry("method")

Logs = Dict[str, Any]  # name → float or 0-d tensor (detached); converted to floats only when logged


class Method(nn.Module, metaclass=abc.ABCMeta):
    """Base of the registered methods.

    Class attributes:
        name: registry name; ``summary``: one line for ``reprscope list methods``; ``paper``: where it comes from.
        params: declared hyper-parameters; ``default_heads``: head configs by part
            (``{"projector": {"kind": "mlp", ...}}``), overridable with ``--set projector.KEY=VALUE``.
        default_optim / default_train: the method's published defaults, applied before the user's settings.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    params: ClassVar[List[Param]] = []
    default_heads: ClassVar[Dict[str, Dict[str, Any]]] = {}
    default_optim: ClassVar[Dict[str, Any]] = {}
    default_train: ClassVar[Dict[str, Any]] = {}
    #: ``--set`` assignments that make a seconds-long CPU run for the registry-wide contract tests
    #: (tests/test_methods.py), e.g. an image data set and a tiny ViT for MAE. Merged over a tiny MLP default.
    smoke_sets: ClassVar[Dict[str, Any]] = {}
    common_params: ClassVar[List[Param]] = [
        Param("var_reg", 0.0, "float", "weight of VICReg's variance term added to the embeddings (Bardes et al. 2022 Table 3)", low=0),
        Param("cov_reg", 0.0, "float", "weight of VICReg's covariance term added to the embeddings (Bardes et al. 2022 Table 3)", low=0),
        Param("reg_gamma", 1.0, "float", "target standard deviation γ of the added variance term", low=0, low_open=True),
    ]

    def __init__(self, **given: Any):
        super().__init__()
        self.cfg: Dict[str, Any] = resolve_params(f"method {self.name}", self.all_params(), given)

    @classmethod
    def all_params(cls) -> List[Param]:
        own = {p.name for p in cls.params}
        return list(cls.params) + [p for p in cls.common_params if p.name not in own]

    # -- hooks --------------------------------------------------------------------------------------------
    def check_output_dim(self, dim: int) -> None:
        """Validate hyper-parameters that depend on the embedding width (e.g. per-dimension temperatures)."""

    def check_model(self, heads: Dict[str, Any], encoder_dim: int) -> None:
        """Validate the resolved heads (e.g. a method that needs a predictor). ``heads``: part → layer specs."""

    def setup(self, bundle: nn.Module) -> None:
        """Create the method's own modules from the built bundle (target networks, prototypes, buffers).

        Called once, before the optimiser is built and before DDP wraps the model; modules created here are
        saved in the checkpoint's ``method_state``.
        """

    def param_groups(self, bundle: nn.Module) -> List[Dict[str, Any]]:
        """Optimiser parameter groups. A group may carry ``fixed_lr=True`` (no schedule, the center-vector paper (ICLR 2024 submission, "A unifying framework for the stability of SSL") B.4 /
        SimSiam's predictor) or ``lr_mult`` (a multiple of the peak lr). Default: everything trainable, one group."""
        params = [p for p in list(bundle.parameters()) + list(self.parameters()) if p.requires_grad]
        return [{"params": params}]

    @abc.abstractmethod
    def training_step(self, bundle: nn.Module, views: List[torch.Tensor], step: int, total_steps: int) -> Tuple[torch.Tensor, Logs]:
        """Loss for one batch of views and the values to log (floats or detached 0-d tensors)."""

    def after_step(self, bundle: nn.Module, step: int, total_steps: int) -> None:
        """Hook after the optimiser step (EMA updates, schedules). Default: nothing."""

    # -- shared pieces -------------------------------------------------------------------------------------
    def regularize(self, embeddings: Sequence[torch.Tensor]) -> Tuple[torch.Tensor | float, Logs]:
        """The optional variance / covariance terms of VICReg (Bardes et al. 2022 eq. 1–2) on each branch's embeddings,
        weighted by ``var_reg`` and ``cov_reg`` and averaged over the branches. 0 when both weights are 0."""
        from ..distributed import gather
        from .losses import covariance_term, variance_term

        wv, wc = self.cfg["var_reg"], self.cfg["cov_reg"]
        if not wv and not wc:
            return 0.0, {}
        total: torch.Tensor | float = 0.0
        logs: Logs = {}
        zs = [gather(z) for z in embeddings]
        if wv:
            v = sum(variance_term(z, self.cfg["reg_gamma"]) for z in zs) / len(zs)
            total = total + wv * v
            logs["var_reg"] = v.detach()
        if wc:
            c = sum(covariance_term(z) for z in zs) / len(zs)
            total = total + wc * c
            logs["cov_reg"] = c.detach()
        return total, logs


def build_method(name: str, cfg: Dict[str, Any] | None = None) -> Method:
    return METHODS.get(name)(**dict(cfg or {}))


def encode(bundle: nn.Module, views: Sequence[torch.Tensor], joint: bool = True) -> List[Dict[str, torch.Tensor]]:
    """Forward every view: ``[{"h", "z", "p"?} per view]``.

    ``joint=True``: one forward of the views concatenated, so BatchNorm normalises with the statistics of all
    views together (SimCLR's reference implementation); ``joint=False``: one forward per view, BatchNorm
    statistics per view (the SimSiam / BYOL reference implementations).
    """
    if not joint:
        return [bundle(v) for v in views]
    n = [v.shape[0] for v in views]
    out = bundle(torch.cat(list(views), dim=0))
    parts = {k: torch.split(t, n) for k, t in out.items()}
    return [{k: parts[k][i] for k in parts} for i in range(len(views))]
