"""DINO: self-distillation with a momentum teacher, centering and sharpening (Caron et al. 2021, ICCV).

The student is the bundle (encoder + DINO head), the teacher an EMA copy of it (``ema.Target``, momentum
0.996 → 1 on BYOL's cosine schedule). With student outputs s_v and teacher outputs t_v (n, K) of the views::

    P_t(v) = softmax((t_v − c) / τ_t),    log P_s(v) = log_softmax(s_v / τ_s)
    L = mean over pairs (a ≠ b) of  mean_i Σ_k −P_t(a)ᵢₖ log P_s(b)ᵢₖ              (DINO eq. 1, Algorithm 1)
    c ← m c + (1 − m) mean_i,v t_v,i                                                  (DINO eq. 4)

``centering=false`` is the ablation of the center-vector paper (ICLR 2024 submission, "A unifying framework for the stability of SSL") B.2 (no c subtracted, c never updated), which collapses.

Design (reference: facebookresearch/dino ``main_dino.py``, ``vision_transformer.DINOHead``):

* The head is a registered head kind ``dino`` (3-layer GELU MLP 2048 → bottleneck 256 → ℓ2 norm →
  weight-normalised bias-free linear to K prototypes), so native checkpoints rebuild it from the spec list
  and the teacher (a copy of encoder + projector) has it too. :meth:`DINO.setup` initialises it as the
  reference does (truncated normal σ = 0.02 and zero biases for the MLP, weight-norm gain g = 1, frozen when
  ``norm_last_layer``).
* The loss is computed on the global batch: student outputs are gathered with gradient, teacher outputs
  without, so the center is updated with the global batch mean of the teacher outputs (both views), as the
  reference's all-reduced ``update_center``. The center and the teacher are the method's, in ``method_state``.
* Step-based schedules, as the trainer counts steps: the teacher temperature rises linearly from
  ``warmup_teacher_temp`` at step 0 to ``teacher_temp`` at step ``warmup_teacher_temp_steps`` − 1
  (``np.linspace`` of the reference, per step instead of per epoch) and stays there; the last layer gets a
  zero gradient and keeps its values for the first ``freeze_last_layer_steps`` steps
  (``cancel_gradients_last_layer``; zero rather than None so DDP sees every parameter used).

Defaults: the paper's τ_s = 0.1, τ_t warm-up 0.04 → 0.07 over the first 30 epochs, center momentum 0.9,
teacher momentum 0.996, ``norm_last_layer`` on, last layer frozen for 1 epoch, AdamW with lr 5e-4 at batch
256 (the paper scales it as 5e-4·B/256: ``--set optim.lr_scaling=linear``), 10 warm-up epochs, cosine decay
to 1e-6 (ratio 0.002), weight decay 0.04. Epoch counts are converted at 196 steps per epoch (CIFAR-10 at batch 256): 5880 warm-up steps, 196 frozen steps. K = 4096 prototypes is the
CIFAR recipe (solo-learn ``scripts/pretrain/cifar/dino.yaml``); ImageNet uses ``projector.out_dim=65536``.
Not reproduced: the reference's weight-decay schedule 0.04 → 0.4 (the trainer's weight decay is constant) and
its per-parameter gradient clipping at 3.0 (``optim.grad_clip`` clips the global norm; off by default).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather, gather_nograd
from ..errors import ReprscopeError
from ..models.heads import HEADS
from ..params import Param
from .base import METHODS, Method, encode
from .losses import at_least_float32
from .ema import Target, cosine_momentum, ema_update


# -- head kind ---------------------------------------------------------------------------------------------


@HEADS.register(
    "dino",
    params=[
        Param("out_dim", 4096, "int", "number of prototypes K (65536 on ImageNet, 4096 in the CIFAR recipes)", low=1),
        Param("hidden_dim", 2048, "int", "width of the hidden layers", low=1),
        Param("bottleneck_dim", 256, "int", "width of the ℓ2-normalised bottleneck", low=1),
        Param("layers", 3, "int", "number of linear layers of the MLP before the bottleneck", low=1),
        Param("bn", False, "bool", "BatchNorm after each hidden linear layer (use_bn_in_head)"),
    ],
)
def dino_head(in_dim: int, out_dim: int = 4096, hidden_dim: int = 2048, bottleneck_dim: int = 256, layers: int = 3,
              bn: bool = False) -> List[Dict[str, Any]]:
    """DINO's head (Caron et al. 2021, ``DINOHead``): (linear → [BN] → GELU) × (layers−1) → linear to the
    bottleneck → ℓ2 norm → weight-normalised linear without bias to ``out_dim`` prototypes."""
    spec: List[Dict[str, Any]] = []
    d = in_dim
    for _ in range(layers - 1):
        spec.append({"type": "linear", "in": d, "out": hidden_dim, "bias": True})
        if bn:
            spec.append({"type": "batchnorm", "in": hidden_dim, "affine": True})
        spec.append({"type": "gelu"})
        d = hidden_dim
    spec.append({"type": "linear", "in": d, "out": bottleneck_dim, "bias": True})
    spec.append({"type": "l2norm"})
    spec.append({"type": "weightnorm_linear", "in": bottleneck_dim, "out": out_dim, "bias": False})
    return spec


# -- functional core ---------------------------------------------------------------------------------------



def teacher_temperature(step: int, warmup_temp: float, temp: float, warmup_steps: int) -> float:
    """τ_t at ``step``: ``linspace(warmup_temp, temp, warmup_steps)[step]`` during the warm-up, then ``temp``
    (the reference's ``teacher_temp_schedule``, indexed by step)."""
    if step >= warmup_steps:
        return float(temp)
    if warmup_steps == 1:
        return float(warmup_temp)
    return float(warmup_temp + (temp - warmup_temp) * step / (warmup_steps - 1))


def dino_loss(student: List[torch.Tensor], teacher: List[torch.Tensor], center: Optional[torch.Tensor],
              teacher_temp: float, student_temp: float = 0.1) -> torch.Tensor:
    """Cross-entropy between the centred, sharpened teacher distribution of one view and the student
    distribution of every other view, averaged over the samples and the pairs (``DINOLoss.forward``).

    Args:
        student: per view, (n, K) student outputs (with gradient).
        teacher: per teacher view, (n, K) teacher outputs (no gradient); teacher view i pairs with every
            student view v ≠ i.
        center: (1, K) or (K,) center subtracted from the teacher outputs; None: no centering.
        teacher_temp, student_temp: τ_t and τ_s.
    """
    logp = [F.log_softmax(at_least_float32(s) / student_temp, dim=-1) for s in student]
    total = logp[0].new_zeros(())
    terms = 0
    for i, t in enumerate(teacher):
        t = at_least_float32(t.detach())
        if center is not None:
            t = t - center
        q = F.softmax(t / teacher_temp, dim=-1)
        for v in range(len(student)):
            if v == i:
                continue
            total = total + (-(q * logp[v]).sum(dim=-1)).mean()
            terms += 1
    return total / terms


@torch.no_grad()
def update_center(center: torch.Tensor, teacher: List[torch.Tensor], momentum: float) -> torch.Tensor:
    """c ← m c + (1 − m) · mean of the teacher outputs over every sample of every view (DINO eq. 4)."""
    batch_center = torch.cat([t.detach() for t in teacher]).to(center.dtype).mean(dim=0, keepdim=True)
    return center * momentum + batch_center * (1 - momentum)


# -- the method --------------------------------------------------------------------------------------------


@METHODS.register("dino")
class DINO(Method):
    """Student–teacher self-distillation with an EMA teacher, centering (optional) and temperature warm-up."""

    name = "dino"
    summary = "DINO: EMA teacher, centering with momentum (or none, the center-vector paper B.2), teacher temperature warm-up"
    paper = "Caron et al. 2021 (DINO); the center-vector paper §2.5 and B.2 (no centering)"
    params = [
        Param("student_temp", 0.1, "float", "τ_s of the student softmax", low=0, low_open=True),
        Param("teacher_temp", 0.07, "float", "τ_t after the warm-up", low=0, low_open=True),
        Param("warmup_teacher_temp", 0.04, "float", "τ_t at step 0", low=0, low_open=True),
        Param("warmup_teacher_temp_steps", 5880, "int", "steps of the linear τ_t warm-up (paper: 30 epochs; "
              "here at 196 steps/epoch)", low=0),
        Param("centering", True, "bool", "subtract the center from the teacher outputs (false: the center-vector paper B.2)"),
        Param("center_momentum", 0.9, "float", "momentum m of the center's EMA", low=0, high=1),
        Param("momentum", 0.996, "float", "teacher EMA momentum at step 0 (cosine schedule to final_momentum)",
              low=0, high=1),
        Param("final_momentum", 1.0, "float", "teacher EMA momentum at the last step", low=0, high=1),
        Param("norm_last_layer", True, "bool", "fix the weight-norm gain of the last layer at 1 (ℓ2-normalised "
              "prototypes)"),
        Param("freeze_last_layer_steps", 196, "int", "the last layer gets no update for the first N steps "
              "(paper: 1 epoch)", low=0),
    ]
    default_heads = {"projector": {"kind": "dino", "out_dim": 4096, "hidden_dim": 2048, "bottleneck_dim": 256,
                                   "layers": 3, "bn": False}}
    default_optim = {"name": "adamw", "lr": 5e-4, "weight_decay": 0.04, "warmup_epochs": 10, "min_lr_ratio": 0.002}
    smoke_sets = {"projector.bottleneck_dim": 16}

    def __init__(self, **given: Any):
        super().__init__(**given)
        self.teacher: Optional[Target] = None
        self._freeze_now = False
        self._snapshot: List[torch.Tensor] = []
        self._hooks: List[Any] = []

    # -- hooks --------------------------------------------------------------------------------------------
    def check_model(self, heads: Dict[str, Any], encoder_dim: int) -> None:
        spec = heads.get("projector") or []
        last = spec[-1]["type"] if spec else None
        if last not in ("linear", "weightnorm_linear"):
            raise ReprscopeError(
                "method dino needs a projector that ends with its prototypes layer (linear or weightnorm_linear); "
                f"got {'no projector' if last is None else repr(last)} — set projector.kind=dino in the config",
                arg="config")
        if self.cfg["norm_last_layer"] and last != "weightnorm_linear":
            raise ReprscopeError(
                "The 'norm_last_layer' parameter of method dino needs a weight-normalised last layer "
                f"(projector.kind=dino); this projector ends with {last!r}. Set method.norm_last_layer=false in the config.",
                arg="config")

    def _last_layer(self, bundle: nn.Module) -> nn.Module:
        return bundle.projector[-1]

    def setup(self, bundle: nn.Module) -> None:
        """Initialise the head as ``DINOHead`` does, create the teacher (a copy of the student) and the center
        (1, K), and make the last layer's gradient zero while it is frozen."""
        last = self._last_layer(bundle)
        with torch.no_grad():
            for m in list(bundle.projector)[:-1]:
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            if hasattr(last, "parametrizations"):
                g = last.parametrizations.weight.original0
                g.fill_(1.0)
                g.requires_grad_(not self.cfg["norm_last_layer"])
        self.teacher = Target(bundle)
        k = int(last.out_features)
        self.register_buffer("center", torch.zeros(1, k, device=next(bundle.parameters()).device))
        for h in self._hooks:
            h.remove()
        self._hooks = [p.register_hook(self._mask_grad) for p in last.parameters() if p.requires_grad]

    def _mask_grad(self, grad: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(grad) if self._freeze_now else grad

    def temperature(self, step: int) -> float:
        c = self.cfg
        return teacher_temperature(step, c["warmup_teacher_temp"], c["teacher_temp"], c["warmup_teacher_temp_steps"])

    def training_step(self, bundle, views: List[torch.Tensor], step: int, total_steps: int) -> Tuple[torch.Tensor, Dict[str, Any]]:
        assert self.teacher is not None, "DINO.setup(bundle) must run before training_step"
        self._freeze_now = step < self.cfg["freeze_last_layer_steps"]
        if self._freeze_now:
            self._snapshot = [p.detach().clone() for p in self._last_layer(bundle).parameters()]
        pair = list(views[:2])
        student = encode(bundle, pair, joint=True)  # both views in one forward, as the MultiCropWrapper
        with torch.no_grad():
            t = self.teacher(torch.cat(pair))["z"]
        t_views = list(torch.split(t, [v.shape[0] for v in pair]))
        s_glob = [gather(e["z"]) for e in student]
        t_glob = [at_least_float32(gather_nograd(x)) for x in t_views]
        temp = self.temperature(step)
        center = self.center if self.cfg["centering"] else None
        loss = dino_loss(s_glob, t_glob, center, temp, self.cfg["student_temp"])
        logs: Dict[str, Any] = {}
        with torch.no_grad():
            q = [F.softmax(((x - center) if center is not None else x) / temp, dim=-1) for x in t_glob]
            logs["teacher_entropy"] = sum(-(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean() for p in q) / len(q)
        if self.cfg["centering"]:
            # the global batch mean (t_glob holds every rank's outputs), as the all-reduced update_center
            self.center.copy_(update_center(self.center, t_glob, self.cfg["center_momentum"]))
            logs["center_norm"] = self.center.norm()
        reg, reg_logs = self.regularize([e["z"] for e in student])
        logs.update(reg_logs)
        logs["dino_loss"] = loss.detach()
        logs["teacher_temp"] = temp
        return loss + reg, logs

    @torch.no_grad()
    def after_step(self, bundle: nn.Module, step: int, total_steps: int) -> None:
        """Restore the frozen last layer (the optimiser may have decayed it), then the teacher EMA step
        ξ ← m ξ + (1 − m) θ with the cosine momentum of this step."""
        if self._snapshot:
            for p, old in zip(self._last_layer(bundle).parameters(), self._snapshot):
                p.copy_(old)
            self._snapshot = []
        m = cosine_momentum(self.cfg["momentum"], step, total_steps, self.cfg["final_momentum"])
        ema_update(self.teacher, bundle, m)
