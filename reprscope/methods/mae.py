"""Masked image modelling on a timm ViT: MAE, U-MAE and M-MAE (one module, three registered units).

* ``mae`` — He et al., "Masked autoencoders are scalable vision learners" (CVPR 2022): a random 75 % of each
  image's patches is removed (per-sample shuffle by an argsort of uniform noise), the encoder sees the visible
  patches plus the prefix (class) tokens, a light Transformer decoder receives the encoded tokens, a shared
  learned mask token at every removed position and fixed 2-D sin-cos positional embeddings, and predicts the
  pixels of every patch; the loss is the mean squared error over the *removed* patches only, against the raw
  or per-patch normalised pixels (``norm_pix_loss``). Paper 004 eq. 4 writes the two "views" of MAE as
  x ⊙ m (seen by the encoder) and x ⊙ (1 − m) (the reconstruction target).
* ``umae`` — Zhang, Wang & Wang, "How mask matters" (NeurIPS 2022), as Tan et al. 2024 (ICML) §3 states it:
  L_U-MAE = L_MAE + λ Σ_{i≠j} (ẑ_iᵀ ẑ_j)², ẑ the ℓ2-normalised encoder features of the masked images of the
  batch (:func:`uniformity_square`).
* ``mmae`` — Tan et al. 2024 §5 eq. 11: L_M-MAE = L_MAE − λ · TCR_μ(Z), the total coding rate (Def. 4.8, eq. 6) of the
  same normalised features, a matrix-based estimate of their entropy used instead of the matrix entropy itself
  for numerical stability (§5); U-MAE is its second-order approximation (Theorem 5.2)
  (:func:`total_coding_rate`).

Which features the regularisers see: the pooled encoder output of the *visible* tokens, pooled as the
backbone pools (the class token for timm's default ``global_pool='token'``, the token average for
``global_pool='avg'``); the U-MAE reference code uses the class token of the encoder on the masked image, or the
average of its patch tokens with ``global_pool``. Under DDP the features are gathered with gradient, so the
regularisers are those of the global batch.

The representation the analyzers read is unchanged: ``bundle.encoder.forward_features`` is the backbone's
pooled features of the full, unmasked image, so an MAE checkpoint is extracted and analyzed like any other.

Data: the data gives two augmented views per sample; MAE and its variants train on one crop per image, so
``views="first"`` (default) uses ``views[0]`` and ``"both"`` masks and reconstructs both views (2B images per
step). The published recipe augments with random resized crop (scale 0.2–1) and horizontal flip only.

Defaults and where they come from:

* ``mask_ratio`` 0.75, ``norm_pix_loss`` true: He et al. 2022 (Fig. 5, Table 1d; its pre-training recipe);
  Tan et al. 2024 §6 and the U-MAE / M-MAE pre-training scripts use the same.
* decoder 4 blocks × 128 wide, 4 heads (32 per head as MAE's 512/16), MLP ratio 4: a CIFAR-scale version of
  MAE's 8 × 512 decoder for ViT-Tiny/Small encoders (He et al. Table 1a/b: a light decoder of a few blocks
  suffices for linear probing accuracy).
* encoder positional embeddings replaced by fixed 2-D sin-cos (``fixed_pos_embed``), as MAE's encoder (the
  official implementation). The encoder's weights keep timm's initialisation; ``--set backbone.weight_init=jax``
  gives the Xavier-uniform linear layers that MAE uses.
* optimiser: AdamW, base lr 1.5e-4 scaled linearly with batch/256, weight decay 0.05, β₂ = 0.95, cosine
  schedule with warm-up (He et al. App. A.1, Table 8); 200 epochs at batch 1024 (Tan et al. 2024 §6) with 20 warm-up
  epochs (the M-MAE pre-training script).
* U-MAE λ = 0.01 (Tan et al. 2024 §6, "U-MAE's original hyperparameters"), τ = 1 (Tan et al. 2024's form; the U-MAE code
  divides the similarities by a ``tau``: its README's β = 1e-4 with τ = 0.1 is the same weight λ/τ² = 0.01).
* M-MAE λ = 0.01, μ = 1 (Tan et al. 2024 §6 and App. B Table 2: μ = 1 for ViT-Base, 3 for ViT-Large).

For 32×32 inputs use a ViT with 4×4 patches (an 8×8 grid, 64 tokens; ``img_size`` follows the data)::

    reprscope train mae --data cifar10:/data/cifar --backbone vit_tiny_patch16_224 --set backbone.patch_size=4
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, ClassVar, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist
from ..errors import ReprscopeError
from ..params import Param
from .base import METHODS, Logs, Method
from .losses import at_least_float32

# -- pure functions ------------------------------------------------------------------------------------------


def sincos_pos_embed_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(m, dim) embedding [sin(p ω_k), cos(p ω_k)] of positions ``pos`` (m,), ω_k = 10000^(−k/(dim/2))
    (Vaswani et al. 2017, as MAE's ``get_1d_sincos_pos_embed_from_grid``)."""
    if dim % 2:
        raise ReprscopeError(f"a sin-cos positional embedding needs an even width; got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """(grid_h·grid_w, dim) float32 fixed 2-D sin-cos positional embedding of a row-major patch grid, as MAE's
    ``get_2d_sincos_pos_embed``: the first dim/2 channels encode the column, the last dim/2 the row."""
    if dim % 4:
        raise ReprscopeError(f"a 2-D sin-cos positional embedding needs a width divisible by 4; got {dim}")
    rows = torch.arange(grid_h).repeat_interleave(grid_w)
    cols = torch.arange(grid_w).repeat(grid_h)
    return torch.cat([sincos_pos_embed_1d(dim // 2, cols), sincos_pos_embed_1d(dim // 2, rows)], dim=1).float()


def patchify(imgs: torch.Tensor, patch_size: Tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) images → (B, L, ph·pw·C) patches, L = (H/ph)(W/pw) in row-major order (the order of a ViT's
    patch tokens); within a patch, pixels row-major with the channel last (MAE's ``patchify``)."""
    b, c, h, w = imgs.shape
    ph, pw = patch_size
    if h % ph or w % pw:
        raise ReprscopeError(f"images of {h}×{w} do not divide into {ph}×{pw} patches")
    x = imgs.reshape(b, c, h // ph, ph, w // pw, pw)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // ph) * (w // pw), ph * pw * c)


def unpatchify(patches: torch.Tensor, patch_size: Tuple[int, int], grid_size: Tuple[int, int], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, L, ph·pw·C) → (B, C, gh·ph, gw·pw)."""
    b = patches.shape[0]
    (ph, pw), (gh, gw) = patch_size, grid_size
    x = patches.reshape(b, gh, gw, ph, pw, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, gh * ph, gw * pw)


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches kept per sample: round(L·(1 − ratio)) (MAE truncates, ``int(L*(1-ratio))``, which loses a patch
    to rounding error for some ratios, e.g. L = 10, ratio 0.9 gives 0)."""
    return int(round(num_patches * (1.0 - mask_ratio)))


def random_masking(noise: torch.Tensor, keep: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by an argsort of noise (He et al. 2022, ``random_masking``).

    Args:
        noise: (B, L) i.i.d. uniform noise; the ``keep`` patches with the smallest noise stay visible.
        keep: number of visible patches per sample.
    Returns:
        ``ids_keep`` (B, keep) visible patch indices (in shuffled order), ``mask`` (B, L) float with 1 at removed
        and 0 at visible patches, ``ids_restore`` (B, L) the inverse permutation: gathering the shuffled
        sequence [visible, removed] with it gives row-major patch order back.
    """
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones_like(noise)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_shuffle[:, :keep], mask, ids_restore


def unshuffle(tokens: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """(B, L, D) tokens in shuffled order [visible, removed] → row-major patch order."""
    return torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalised pixels (t − mean) / sqrt(var + ε) over each patch's ph·pw·C values, with the
    unbiased variance (MAE's ``norm_pix_loss`` target). ``target``: (B, L, P)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / torch.sqrt(var + eps)


def masked_squared_error(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample parts of MAE's loss: the sum over removed patches of the per-patch mean squared error, (B,),
    and the number of removed patches, (B,). The loss is the ratio of their totals (:func:`masked_mse`); totals
    over every rank's parts give the global batch's loss under DDP.

    Args:
        pred, target: (B, L, P) predicted and target patch pixels.
        mask: (B, L), 1 at removed patches, 0 at visible ones.
    """
    per_patch = (pred - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum(dim=1), mask.sum(dim=1)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MAE's reconstruction loss: per-patch mean squared error averaged over the removed patches only
    (shapes as :func:`masked_squared_error`)."""
    err, count = masked_squared_error(pred, target, mask)
    return err.sum() / count.sum()


def mae_targets(imgs: torch.Tensor, patch_size: Tuple[int, int], norm_pix_loss: bool = True) -> torch.Tensor:
    """(B, L, P) reconstruction targets: the patches of ``imgs`` (B, C, H, W), per-patch normalised when
    ``norm_pix_loss`` (He et al. 2022 §3, "Reconstruction target")."""
    target = patchify(imgs, patch_size)
    return normalize_patches(target) if norm_pix_loss else target


def mae_loss(pred: torch.Tensor, imgs: torch.Tensor, mask: torch.Tensor, patch_size: Tuple[int, int],
             norm_pix_loss: bool = True) -> torch.Tensor:
    """:func:`masked_mse` of ``pred`` (B, L, P) against :func:`mae_targets` of ``imgs``."""
    return masked_mse(pred, mae_targets(imgs, patch_size, norm_pix_loss), mask)



def uniformity_square(z: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """U-MAE's uniformity regulariser (Zhang et al. 2022; Tan et al. 2024 §3): the mean over pairs i ≠ j of
    (ẑ_iᵀ ẑ_j / τ)², ẑ_i = z_i/‖z_i‖.

    Paper 004 writes the sum γ Σ_{i≠j}; the mean over the n(n − 1) pairs makes λ independent of the batch size
    (the reference code's mean over all n² entries of the similarity matrix differs from it by the constant
    diagonal and a factor (n − 1)/n). Computed as (‖ẐᵀẐ‖²_F − Σ_i ‖ẑ_i‖⁴)/(τ² n(n − 1)) on the smaller of
    the n×n and d×d Grams (both have the same Frobenius norm).

    Args:
        z: (n, d) features, n ≥ 2.
    """
    n, d = z.shape
    if n < 2:
        raise ReprscopeError(f"the uniformity regulariser needs at least 2 samples; got {n}")
    zn = F.normalize(z, dim=1)
    gram = zn.T @ zn if d < n else zn @ zn.T
    diag = zn.pow(2).sum(dim=1).pow(2).sum()  # Σ_i ‖ẑ_i‖⁴ (= n, written out so a zero row counts 0)
    return (gram.pow(2).sum() - diag) / (tau * tau * n * (n - 1))


TCR_SCALES = ("mu_over_d", "eq6")


def total_coding_rate(z: torch.Tensor, mu: float = 1.0, scale: str = "mu_over_d", center: bool = False) -> torch.Tensor:
    """Total coding rate of the ℓ2-normalised features, the entropy surrogate of M-MAE (Tan et al. 2024 Def. 4.8,
    eq. 6; its loss eq. 11 subtracts λ times this).

    * ``scale="eq6"``: TCR_μ = log det(μ I_d + ẐᵀẐ), Tan et al. 2024 eq. 6 with the samples as rows of Ẑ;
    * ``scale="mu_over_d"`` (default): log det(I_d + (μ/d) ẐᵀẐ), the form of the released M-MAE code
      (``uniformity_loss_TCR``), whose μ the paper's experiments report (§6: μ = 1 for ViT-Base, 3 for
      ViT-Large; App. B Table 2). Eq. 6 and this differ by the constant d log μ and the scale of the Gram
      (1/μ against μ/d); Theorem 5.2 expands the log det of I + cẐᵀẐ.

    ``center=True`` uses the centred Gram Ẑᵀ J Ẑ, J = I − 11ᵀ/n (the reference code's ``centering``).
    The log det is taken on the smaller of the d×d and n×n forms (Sylvester: log det(aI_d + cẐᵀẐ) =
    (d − n) log a + log det(aI_n + cẐẐᵀ)).

    Args:
        z: (n, d) features.
    Returns:
        0-d tensor.
    """
    if scale not in TCR_SCALES:
        raise ReprscopeError(f"The 'tcr_scale' parameter must be one of {', '.join(map(repr, TCR_SCALES))}. "
                             f"Got {scale!r} instead.")
    n, d = z.shape
    zn = F.normalize(z, dim=1)
    if center:
        zn = zn - zn.mean(dim=0, keepdim=True)
    a, c = (mu, 1.0) if scale == "eq6" else (1.0, mu / d)
    small = zn.T @ zn if d <= n else zn @ zn.T
    m = small.shape[0]
    eye = torch.eye(m, dtype=small.dtype, device=small.device)
    return torch.logdet(a * eye + c * small) + (d - m) * math.log(a)


# -- the decoder ---------------------------------------------------------------------------------------------


class MAEDecoder(nn.Module):
    """MAE's light decoder (He et al. 2022 §3): linear embedding of the encoder tokens, a shared learned mask
    token at every removed position, fixed 2-D sin-cos positional embeddings (none on the prefix tokens, MAE's
    zero row for the class token), Transformer blocks (timm ``Block``), LayerNorm and a linear map to the
    ph·pw·C pixels of each patch.

    Args:
        encoder_dim: width D of the encoder tokens.
        grid_size: (gh, gw) patch grid; ``patch_dim`` = ph·pw·C pixels per patch.
    """

    def __init__(self, encoder_dim: int, grid_size: Tuple[int, int], patch_dim: int, dim: int = 128, depth: int = 4,
                 heads: int = 4, mlp_ratio: float = 4.0):
        super().__init__()
        from timm.models.vision_transformer import Block

        if dim % heads:
            raise ReprscopeError(f"The 'decoder_dim' parameter ({dim}) must divide into 'decoder_heads' ({heads}) heads.")
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, *grid_size)[None], persistent=False)
        norm = partial(nn.LayerNorm, eps=1e-6)  # MAE's norm layer
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)])
        self.norm = norm(dim)
        self.pred = nn.Linear(dim, patch_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MAE's initialisation: mask token N(0, 0.02²), Xavier-uniform linear weights, zero biases, unit norms."""
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor, ids_restore: torch.Tensor, num_prefix: int) -> torch.Tensor:
        """(B, num_prefix + k, D) encoder tokens (prefix first, visible patches in shuffled order) and
        (B, L) ``ids_restore`` → (B, L, patch_dim) predicted pixels of every patch in row-major order."""
        x = self.embed(tokens)
        prefix, visible = x[:, :num_prefix], x[:, num_prefix:]
        b, length = ids_restore.shape
        mask_tokens = self.mask_token.to(x.dtype).expand(b, length - visible.shape[1], -1)
        patches = unshuffle(torch.cat([visible, mask_tokens], dim=1), ids_restore) + self.pos_embed.to(x.dtype)
        x = self.norm(self.blocks(torch.cat([prefix, patches], dim=1)))
        return self.pred(x[:, num_prefix:])


# -- the methods ---------------------------------------------------------------------------------------------


class MaskedImageModel(Method):
    """MAE's masked reconstruction; the registered units below add their uniformity regulariser
    (:meth:`regularizer`) to it. Needs a timm ViT backbone and no projector or predictor."""

    #: the method needs a ViT backbone (a default backbone is one)
    needs_vit: ClassVar[bool] = True

    params: ClassVar[List[Param]] = [
        Param("mask_ratio", 0.75, "float", "fraction of patches removed per image (He et al. 2022)", low=0,
              low_open=True, high=0.99),
        Param("norm_pix_loss", True, "bool", "reconstruct per-patch normalised pixels (MAE's default recipe)"),
        Param("decoder_dim", 128, "int", "decoder width (MAE ViT-B: 512; 128 at CIFAR scale)", low=4),
        Param("decoder_depth", 4, "int", "decoder Transformer blocks (MAE ViT-B: 8; 4 at CIFAR scale)", low=1),
        Param("decoder_heads", 4, "int", "decoder attention heads", low=1),
        Param("decoder_mlp_ratio", 4.0, "float", "decoder MLP hidden width / decoder width", low=0, low_open=True),
        Param("fixed_pos_embed", True, "bool", "replace the encoder's positional embedding by fixed 2-D sin-cos, as MAE"),
        Param("views", "first", "choice", "first: train on views[0] (one crop per image, as MAE); both: on both views",
              choices=("first", "both")),
        Param("beta2", 0.95, "float", "Adam/AdamW β₂ (MAE recipe, He et al. Table 8); ignored by sgd/lars",
              low=0, high=1),
    ]
    default_heads: ClassVar[Dict[str, Dict[str, Any]]] = {}
    default_optim: ClassVar[Dict[str, Any]] = {"name": "adamw", "lr": 1.5e-4, "lr_scaling": "linear",
                                               "weight_decay": 0.05, "warmup_epochs": 20}
    default_train: ClassVar[Dict[str, Any]] = {"epochs": 200, "batch_size": 1024}
    smoke_sets: ClassVar[Dict[str, Any]] = {
        "data": "shapes", "backbone": "vit_tiny_patch16_224", "backbone.patch_size": 8,
        "backbone.embed_dim": 32, "backbone.depth": 2, "backbone.num_heads": 2,
        "method.decoder_dim": 32, "method.decoder_depth": 1, "method.decoder_heads": 2,
    }

    def check_model(self, heads: Dict[str, Any], encoder_dim: int) -> None:
        if heads:
            raise ReprscopeError(f"method {self.name} trains the encoder and its own decoder only; got a "
                                 f"{' and a '.join(heads)} (drop it with {next(iter(heads))}=none in the config)", arg="config")

    def setup(self, bundle: nn.Module) -> None:
        enc = bundle.encoder
        if not getattr(enc, "supports_token_masking", False):
            raise ReprscopeError(
                f"method {self.name} needs a ViT backbone (a timm VisionTransformer), e.g. model.backbone = "
                f"vit_tiny_patch16_224 with backbone.patch_size=4 for 32×32 images; got "
                f"{type(getattr(enc, 'model', enc)).__name__}", arg="config")
        layout = enc.patch_layout()
        self.patch_size: Tuple[int, int] = layout["patch_size"]
        self.grid_size: Tuple[int, int] = layout["grid_size"]
        self.num_prefix: int = layout["num_prefix_tokens"]
        length = self.grid_size[0] * self.grid_size[1]
        keep = num_visible(length, self.cfg["mask_ratio"])
        if not 1 <= keep < length:
            raise ReprscopeError(f"The 'mask_ratio' parameter of method {self.name} ({self.cfg['mask_ratio']}) leaves "
                                 f"{keep} of {length} patches visible; it must leave between 1 and {length - 1}.")
        self.keep = keep
        channels = int(enc.model.patch_embed.proj.in_channels)
        self.channels = channels
        self.decoder = MAEDecoder(enc.num_features, self.grid_size, self.patch_size[0] * self.patch_size[1] * channels,
                                  self.cfg["decoder_dim"], self.cfg["decoder_depth"], self.cfg["decoder_heads"],
                                  self.cfg["decoder_mlp_ratio"])
        if self.cfg["fixed_pos_embed"]:
            _fix_sincos_pos_embed(enc, layout)

    def param_groups(self, bundle: nn.Module) -> List[Dict[str, Any]]:
        (group,) = super().param_groups(bundle)
        return [{**group, "betas": (0.9, self.cfg["beta2"])}]

    def masks(self, batch: int, device: torch.device, blocks: int = 1) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`random_masking` for this rank's ``blocks`` × ``batch`` images (``blocks`` views of ``batch``
        samples, concatenated) from torch's global RNG, which the trainer checkpoints, so resume is exact. For
        each block every rank draws the noise of the whole global batch and takes its own rows, so N processes
        mask exactly as one process does on the global batch."""
        info = dist.info()
        length = self.grid_size[0] * self.grid_size[1]
        rows = slice(info.rank * batch, (info.rank + 1) * batch)
        noise = torch.cat([torch.rand(batch * info.world_size, length, device=device)[rows] for _ in range(blocks)])
        return random_masking(noise, self.keep)

    def reconstruct(self, bundle: nn.Module, imgs: torch.Tensor, blocks: int = 1
                    ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """One MAE forward of (B, C, H, W) ``imgs`` (``blocks`` views of B/blocks samples, concatenated): the
        reconstruction loss of the global batch, the pooled features (B, D) of the visible tokens, and extras
        ``pred`` (B, L, P), ``mask`` (B, L) and ``ids_keep`` (B, k)."""
        ids_keep, mask, ids_restore = self.masks(imgs.shape[0] // blocks, imgs.device, blocks)
        tokens, pooled = bundle.encoder.forward_masked(imgs, ids_keep)
        pred = self.decoder(tokens, ids_restore, self.num_prefix)
        target = mae_targets(at_least_float32(imgs), self.patch_size, self.cfg["norm_pix_loss"])
        err, count = masked_squared_error(at_least_float32(pred), target, mask)
        loss = dist.gather(err).sum() / dist.gather_nograd(count).sum()  # the global batch's loss under DDP
        return loss, pooled, {"pred": pred, "mask": mask, "ids_keep": ids_keep}

    def regularizer(self, z: torch.Tensor) -> Tuple[torch.Tensor | float, Logs]:
        """The term added to the reconstruction loss, from the global batch's features ``z`` (n, D) in float32.
        Plain MAE: none."""
        return 0.0, {}

    def training_step(self, bundle, views: List[torch.Tensor], step: int, total_steps: int) -> Tuple[torch.Tensor, Logs]:
        used = views[:1] if self.cfg["views"] == "first" else views[:2]
        imgs = used[0] if len(used) == 1 else torch.cat(list(used), dim=0)
        rec, pooled, _ = self.reconstruct(bundle, imgs, len(used))
        logs: Logs = {"reconstruction": rec.detach()}
        loss = rec
        with torch.autocast(device_type=pooled.device.type, enabled=False):  # log det / Grams in float32
            reg, reg_logs = self.regularizer(at_least_float32(dist.gather(pooled)))
        logs.update(reg_logs)
        loss = loss + reg
        vic, vic_logs = self.regularize([at_least_float32(pooled)])
        logs.update(vic_logs)
        return loss + vic, logs


def _fix_sincos_pos_embed(encoder: nn.Module, layout: Dict[str, Any]) -> None:
    """Set a ViT's positional embedding to fixed 2-D sin-cos (zero rows for prefix tokens that have one) and
    freeze it, as MAE's encoder (He et al. 2022, App. A.1)."""
    pos = getattr(encoder.model, "pos_embed", None)
    if pos is None:
        return
    table = sincos_pos_embed_2d(pos.shape[-1], *layout["grid_size"])
    table = torch.cat([torch.zeros(layout["pos_embed_prefix"], table.shape[1]), table], dim=0)
    if tuple(pos.shape[1:]) != tuple(table.shape):
        raise ReprscopeError(f"the encoder's positional embedding has shape {tuple(pos.shape)}, expected "
                             f"(1, {table.shape[0]}, {table.shape[1]}) for its patch grid")
    with torch.no_grad():
        pos.copy_(table[None].to(pos.dtype))
    pos.requires_grad_(False)


@METHODS.register("mae")
class MAE(MaskedImageModel):
    """Masked autoencoder: masked-patch pixel reconstruction (He et al. 2022)."""

    name = "mae"
    summary = "masked autoencoder on a ViT: MSE on removed patches, light decoder, norm_pix_loss (He et al. 2022)"
    paper = "He et al. 2022, Masked autoencoders are scalable vision learners; Tan et al. 2024 eq. 4"


@METHODS.register("umae")
class UMAE(MaskedImageModel):
    """MAE + λ × the square uniformity of the encoder features (Zhang et al. 2022; Tan et al. 2024 §3)."""

    name = "umae"
    summary = "U-MAE: MAE + λ·mean_{i≠j}(ẑᵢᵀẑⱼ/τ)² on the encoder features (Zhang et al. 2022; Tan et al. 2024 §3, §6)"
    paper = "Zhang, Wang & Wang 2022, How mask matters; Tan et al. 2024 §3 and §6"
    params = MaskedImageModel.params + [
        Param("lam", 0.01, "float", "λ, weight of the uniformity term (Tan et al. 2024 §6)", low=0),
        Param("tau", 1.0, "float", "τ dividing the cosine similarities (U-MAE code option; 1 in Tan et al. 2024)",
              low=0, low_open=True),
    ]

    def regularizer(self, z: torch.Tensor) -> Tuple[torch.Tensor | float, Logs]:
        u = uniformity_square(z, self.cfg["tau"])
        return self.cfg["lam"] * u, {"uniformity": u.detach()}


@METHODS.register("mmae")
class MMAE(MaskedImageModel):
    """MAE − λ × the total coding rate of the encoder features (Tan et al. 2024 §5, eq. 11)."""

    name = "mmae"
    summary = "M-MAE: MAE − λ·TCR_μ of the normalised encoder features (Tan et al. 2024 §5 eq. 11)"
    paper = "Tan et al. 2024, Information flow in self-supervised learning, §5 eq. 11"
    params = MaskedImageModel.params + [
        Param("lam", 0.01, "float", "λ, weight of the total coding rate (Tan et al. 2024 §6)", low=0),
        Param("mu", 1.0, "float", "μ of the total coding rate (Tan et al. 2024 §6: 1 for ViT-B, 3 for ViT-L)",
              low=0, low_open=True),
        Param("tcr_scale", "mu_over_d", "choice", "mu_over_d: log det(I + μ/d·ẐᵀẐ) (M-MAE code); "
              "eq6: log det(μI + ẐᵀẐ) (Tan et al. 2024 eq. 6)", choices=TCR_SCALES),
        Param("center", False, "bool", "centre the normalised features over the batch (M-MAE code option)"),
    ]

    def regularizer(self, z: torch.Tensor) -> Tuple[torch.Tensor | float, Logs]:
        tcr = total_coding_rate(z, self.cfg["mu"], self.cfg["tcr_scale"], self.cfg["center"])
        return -self.cfg["lam"] * tcr, {"tcr": tcr.detach()}
