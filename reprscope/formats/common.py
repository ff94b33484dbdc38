"""Pieces shared by the formats of checkpoints from the wild.

Each format is a detection rule plus a key mapping (after timm's ``checkpoint_filter_fn``); what they share
lives here: the allow-listed reader, container resolution, the one prefix cleaner, ResNet inference from
shapes, head-spec inference from ``prefix.N.*`` keys and the strict loader that accounts for every tensor.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..errors import ReprscopeError
from ..models.bundle import ModelBundle
from .base import LoadOptions, read_checkpoint_file

#: containers tried in this order before falling back to "the sub-dict holding the most tensors"
#: (teacher before student: the EMA teacher is the default branch of DINO-family checkpoints)
CONTAINER_KEYS = ("state_dict", "model", "teacher", "student", "resnet", "state_dict_ema")

#: wrappers added by DDP/DataParallel and torch.compile; removed only at the start of a key, dot included
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

#: torchvision/timm ResNet stages: block counts → depth
_BASIC_DEPTHS = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34}
_BOTTLENECK_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
RESNET_ROOTS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc")

_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# -- 8. deserialisation -------------------------------------------------------------------------------------


def allowlisted_load(path: os.PathLike | str) -> Any:
    """``torch.load(weights_only=True)`` with ``argparse.Namespace`` allow-listed (DINO and MAE pickle one):
    the shared reader does this for every format. Never falls back to full unpickling."""
    return read_checkpoint_file(path)


# -- 1. the container ---------------------------------------------------------------------------------------


def _n_tensors(d: Any) -> int:
    return sum(isinstance(v, torch.Tensor) for v in d.values()) if isinstance(d, Mapping) else 0


def find_state_dict(payload: Mapping[str, Any]) -> Tuple[Dict[str, torch.Tensor], Optional[str]]:
    """The tensor dict of a checkpoint and the container key it was found under (None: the payload itself).

    Tries :data:`CONTAINER_KEYS` in order; else the payload when every value is a tensor; else the sub-dict
    holding the most tensors. Raises ReprscopeError when no dict of tensors is found.
    """
    if not isinstance(payload, Mapping):
        raise ReprscopeError(f"expected a checkpoint dict, got a {type(payload).__name__}")
    for key in CONTAINER_KEYS:
        if _n_tensors(payload.get(key)) > 0:
            return dict(payload[key]), key
    if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return dict(payload), None
    best, best_n = None, 0
    for key, value in payload.items():
        n = _n_tensors(value)
        if n > best_n:
            best, best_n = key, n
    if best is None:
        keys = ", ".join(map(str, list(payload)[:8]))
        raise ReprscopeError(f"found no dict of tensors in the checkpoint (top-level keys: {keys})")
    return dict(payload[best]), best


def other_networks(payload: Mapping[str, Any], container: Optional[str]) -> List[str]:
    """Top-level dicts of tensors beside the one a raw reading would take (``container`` found as "the dict with
    the most tensors"): a file holding several networks (I-JEPA's encoder / target_encoder / predictor, a BYOL
    release's online_backbone / target_backbone) is a training checkpoint of its own format, not one raw network."""
    if container is None or container in CONTAINER_KEYS:
        return []
    return [str(k) for k, v in payload.items() if k != container and _n_tensors(v) > 0]


# -- 2. prefixes --------------------------------------------------------------------------------------------


def strip_key(key: str) -> str:
    """``key`` without leading ``module.`` / ``_orig_mod.`` wrappers (repeated, e.g. ``module._orig_mod.``)."""
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def strip_prefix(keys: Iterable[str]) -> List[str]:
    """Each key without its leading wrapper prefixes; ``module.encoder_q.x`` → ``encoder_q.x``, never ``_q.x``."""
    return [strip_key(k) for k in keys]


def strip_state(state: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """``(stripped state, stripped key → original key)``; two keys that collide after stripping raise."""
    out: Dict[str, Any] = {}
    origin: Dict[str, str] = {}
    for k, v in state.items():
        s = strip_key(k)
        if s in out:
            raise ReprscopeError(f"keys '{origin[s]}' and '{k}' are the same weight once 'module.'/'_orig_mod.' are removed")
        out[s], origin[s] = v, k
    return out, origin


def sub_state(state: Mapping[str, Any], prefix: str) -> Dict[str, Any]:
    """Entries under ``prefix.`` with the prefix (and its dot) removed; ``encoder.`` never matches ``encoder_q.``."""
    p = prefix.rstrip(".") + "."
    return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}


# -- 6. the architecture from shapes ------------------------------------------------------------------------


@dataclass(frozen=True)
class ResNetArch:
    """A torchvision-layout ResNet read from its weights.

    Attributes:
        name: timm model name (``resnet18`` … ``resnet152``, ``wide_resnet50_2``).
        kwargs: extra ``timm.create_model`` kwargs (``in_chans``; ``cardinality`` and ``base_width`` of a ResNeXt).
        cifar_stem: conv1 is 3×3 stride 1 and there is no max-pool (solo-learn / CIFAR ResNets).
        depth: 18, 34, 50, 101 or 152.
        forced: the name was given with ``--arch`` instead of read from the shapes.
    """

    name: str
    kwargs: Dict[str, Any] = field(default_factory=dict)
    cifar_stem: bool = False
    depth: int = 50
    forced: bool = False
    #: channels of the stem conv (64; a uniformly widened ResNet: 64 × the width multiplier)
    stem_width: int = 64

    def config(self) -> Dict[str, Any]:
        kw = {k: list(v) if isinstance(v, tuple) else v for k, v in self.kwargs.items()}
        return {"arch": self.name, "timm_kwargs": kw, "cifar_stem": self.cifar_stem, "depth": self.depth,
                "stem_width": self.stem_width, "arch_source": "--arch" if self.forced else "read from the weights' shapes"}


def _shape(state: Mapping[str, Any], key: str) -> Optional[Tuple[int, ...]]:
    v = state.get(key)
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def infer_resnet(state: Mapping[str, Any]) -> ResNetArch:
    """Depth, stem and width of a torchvision-named ResNet state dict.

    Args:
        state: backbone weights with torchvision names (``conv1.weight``, ``layer1.0.conv1.weight`` …).

    Raises:
        ReprscopeError: not a ResNet, an unknown block layout, a deep stem or a uniformly widened ResNet.
    """
    conv1 = _shape(state, "conv1.weight")
    if conv1 is None:
        if _shape(state, "conv1.0.weight") is not None:
            raise ReprscopeError("deep-stem ResNets (conv1.0/conv1.3/conv1.6, timm 'resnet*d') are not supported yet")
        raise ReprscopeError("not a torchvision-layout ResNet: there is no 'conv1.weight'")
    if len(conv1) != 4:
        raise ReprscopeError(f"'conv1.weight' has shape {list(conv1)}; a ResNet stem conv is 4-D")
    out_ch, in_ch, kh, kw = conv1
    widen = out_ch // 64
    if out_ch % 64 or widen < 1:
        raise ReprscopeError(f"'conv1.weight' has shape {list(conv1)}: a ResNet stem of {out_ch} channels is neither "
                             "64 nor a multiple of it (a uniformly widened ResNet, SimCLR / VISSL w2, w4)")
    if (kh, kw) == (7, 7):
        cifar = False
    elif (kh, kw) == (3, 3):
        cifar = True
    else:
        raise ReprscopeError(f"'conv1.weight' has shape {list(conv1)}; expected a 7×7 (ImageNet) or 3×3 (CIFAR) stem")
    counts = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in state for m in [re.match(rf"layer{stage}\.(\d+)\.", k)] if m}
        if not idx or idx != set(range(max(idx) + 1)):
            raise ReprscopeError(f"ResNet stage 'layer{stage}' has blocks {sorted(idx)}; expected 0..n-1")
        counts.append(max(idx) + 1)
    bottleneck = _shape(state, "layer1.0.conv3.weight") is not None
    table = _BOTTLENECK_DEPTHS if bottleneck else _BASIC_DEPTHS
    depth = table.get(tuple(counts))
    if depth is None:
        kind = "Bottleneck" if bottleneck else "BasicBlock"
        raise ReprscopeError(f"{kind} ResNet with blocks per stage {counts} is not a known depth; known: "
                             + ", ".join(f"{v}: {list(k)}" for k, v in table.items()))
    name = f"resnet{depth}"
    kwargs: Dict[str, Any] = {"in_chans": int(in_ch)} if in_ch != 3 else {}
    inner = _shape(state, "layer1.0.conv1.weight")
    conv2 = _shape(state, "layer1.0.conv2.weight")
    if bottleneck and inner is not None and conv2 is not None and len(conv2) == 4 and conv2[1]:
        width, groups = int(inner[0]), int(inner[0]) // int(conv2[1])
        if groups < 1 or width % groups or int(conv2[1]) * groups != width:
            raise ReprscopeError(f"'layer1.0.conv2.weight' has shape {list(conv2)}: not a grouped 3×3 conv of the "
                                 f"{width}-wide bottleneck")
        if groups > 1:  # ResNeXt (torchvision resnext50_32x4d = timm resnet50 with cardinality 32, base_width 4)
            kwargs.update(cardinality=groups, base_width=width // groups)
        elif widen > 1:  # uniformly widened (SimCLR x2, VISSL w2): every channel count × widen
            if width != 64 * widen:
                raise ReprscopeError(f"a {out_ch}-channel stem with a {width}-wide first bottleneck is not a uniformly "
                                     "widened ResNet")
            kwargs["channels"] = tuple(c * widen for c in (64, 128, 256, 512))
        elif width == 128 and depth in (50, 101):
            name = f"wide_resnet{depth}_2"
        elif width != 64:
            kwargs["base_width"] = width  # a widened bottleneck (the stage outputs keep their width)
    if widen > 1 and "channels" not in kwargs:
        raise ReprscopeError(f"'conv1.weight' has shape {list(conv1)}: a {out_ch}-channel stem is read only for "
                             "uniformly widened Bottleneck ResNets")
    return ResNetArch(name=name, kwargs=kwargs, cifar_stem=cifar, depth=depth, stem_width=int(out_ch))


def check_timm_name(name: str, family: Optional[str] = None) -> None:
    """``name`` must be a timm model name (and, with ``family``, build a timm ``ResNet`` / ``VisionTransformer``).

    Raises:
        ReprscopeError: naming close timm names, or what the name builds instead.
    """
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise ReprscopeError(f"arch '{name}' is not a timm model name"
                             + (f"; close names: {', '.join(close)}" if close else "; see timm.list_models()"), arg="arch")
    if family is None:
        return
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    kind = type(model).__name__
    if kind != family:
        raise ReprscopeError(f"arch '{name}' builds a timm {kind}, but this checkpoint holds a {family} backbone", arg="arch")


def resnet_arch(state: Mapping[str, Any], options: Optional[LoadOptions] = None) -> ResNetArch:
    """The ResNet of ``state``: read from the shapes (:func:`infer_resnet`), or the timm name given with
    ``--arch`` (its stem still read from ``conv1``: a 3×3 conv1 is a CIFAR stem)."""
    if options is None or options.arch is None:
        return infer_resnet(state)
    name, kwargs = options.arch_name, dict(options.arch_kwargs)
    check_timm_name(name, "ResNet")
    conv1 = _shape(state, "conv1.weight")
    cifar = conv1 is not None and len(conv1) == 4 and tuple(conv1[2:]) == (3, 3)
    if conv1 is not None and len(conv1) == 4 and conv1[1] != 3:
        kwargs.setdefault("in_chans", int(conv1[1]))
    m = re.search(r"(\d+)", name)
    return ResNetArch(name=name, kwargs=kwargs, cifar_stem=cifar, depth=int(m.group(1)) if m else 0,
                      forced=True)


class ResNetEncoder(nn.Module):
    """A timm ResNet without classifier (optionally with a CIFAR stem), following the backbone contract.

    ``forward_features(x)`` → (B, num_features) globally average-pooled features, the input of the original
    ``fc``. State-dict keys are ``model.<torchvision name>``.

    Args:
        arch: what :func:`infer_resnet` read.
        cifar_padding: padding of the 3×3 CIFAR stem conv (not visible in the weights; 1 in most code).
    """

    def __init__(self, arch: ResNetArch, cifar_padding: int = 1):
        super().__init__()
        import timm

        self.model = timm.create_model(arch.name, pretrained=False, num_classes=0, **arch.kwargs)
        in_ch = int(arch.kwargs.get("in_chans", 3))
        stem = int(arch.stem_width)
        if stem != int(self.model.conv1.out_channels):  # timm's default stem has 64 channels whatever the stages:
            # a uniformly widened ResNet's stem, and the first block that reads it, take the wider stem
            self.model.conv1 = nn.Conv2d(in_ch, stem, kernel_size=7, stride=2, padding=3, bias=False)
            self.model.bn1 = nn.BatchNorm2d(stem)
            first = self.model.layer1[0]
            first.conv1 = nn.Conv2d(stem, first.conv1.out_channels, kernel_size=1, bias=False)
            ds = first.downsample[0]
            first.downsample[0] = nn.Conv2d(stem, ds.out_channels, kernel_size=1, stride=ds.stride, bias=False)
        if arch.cifar_stem:
            self.model.conv1 = nn.Conv2d(in_ch, stem, kernel_size=3, stride=1, padding=cifar_padding, bias=False)
            self.model.maxpool = nn.Identity()
        self.num_features = int(self.model.num_features)
        self.feature_names: List[str] = [f"model.layer{i}" for i in range(1, 5)]

    #: an image model whose global pooling takes any input size
    image_input = True
    fixed_input_size = None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


# -- 7. heads from their keys -------------------------------------------------------------------------------


def head_spec_from_state(state: Mapping[str, Any], prefix: str) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Rebuild a projector/predictor from ``prefix.N.<param>`` keys.

    A 2-D ``weight`` is a Linear (bias if ``bias`` is present); a 1-D ``running_mean`` is a BatchNorm1d
    (affine iff ``weight`` is present). A single skipped index is a parameter-free layer, taken to be a ReLU
    (every ResNet-era SSL head: SimSiam/MoCo v3 ``{0,1,3,4,6,7}``, MoCo v2 ``{0,2}``), so the Sequential
    keeps the original indices. A bare ``prefix.weight`` (MoCo v1 ``fc``) is one Linear.

    Returns:
        ``(spec, renamed)``: the layer-spec list for ``models.heads.build_head`` and the weights keyed by that
        Sequential's own names (``"0.weight"``, ``"1.running_mean"`` …).

    Raises:
        ReprscopeError: no keys under ``prefix``, an unknown parameter, a gap of more than one index.
    """
    sub = sub_state(state, prefix)
    if not sub:
        raise ReprscopeError(f"no weights under '{prefix}.'")
    if set(sub) <= {"weight", "bias"}:  # a bare Linear
        sub = {f"0.{k}": v for k, v in sub.items()}
    layers: Dict[int, Dict[str, Any]] = {}
    for k, v in sub.items():
        m = re.fullmatch(r"(\d+)\.(\w+)", k)
        if not m:
            raise ReprscopeError(f"'{prefix}.{k}' is not a '{prefix}.<index>.<param>' weight of a projector/predictor")
        layers.setdefault(int(m.group(1)), {})[m.group(2)] = v
    spec: List[Dict[str, Any]] = []
    renamed: Dict[str, Any] = {}
    last = max(layers)
    i = 0
    while i <= last:
        if i not in layers:
            j = i
            while j not in layers:
                j += 1
            if i == 0 or j - i > 1:
                raise ReprscopeError(
                    f"'{prefix}' has no weights at indices {list(range(i, j))}; only a single parameter-free layer "
                    "(read as ReLU) between weighted layers can be inferred")
            spec.append({"type": "relu"})
            i += 1
            continue
        params = layers[i]
        w = params.get("weight")
        if "running_mean" in params:
            unknown = sorted(set(params) - set(_BN_KEYS))
            if unknown:
                raise ReprscopeError(f"'{prefix}.{i}' looks like a BatchNorm but has {unknown}")
            n = int(params["running_mean"].numel())
            spec.append({"type": "batchnorm", "in": n, "affine": w is not None})
        elif isinstance(w, torch.Tensor) and w.dim() == 2:
            unknown = sorted(set(params) - {"weight", "bias"})
            if unknown:
                raise ReprscopeError(f"'{prefix}.{i}' looks like a Linear but has {unknown}")
            spec.append({"type": "linear", "in": int(w.shape[1]), "out": int(w.shape[0]), "bias": "bias" in params})
        else:
            desc = {p: list(getattr(t, "shape", [])) for p, t in params.items()}
            raise ReprscopeError(f"'{prefix}.{i}' is neither a Linear (2-D weight) nor a BatchNorm (running_mean): {desc}")
        for p, t in params.items():
            renamed[f"{i}.{p}"] = t
        i += 1
    check_head_widths(spec, prefix)
    return spec, renamed


def check_head_widths(spec: List[Dict[str, Any]], prefix: str) -> None:
    """Each layer must take the width the previous one gives; a mismatch names the layer as it is in the file."""
    width = None
    for j, layer in enumerate(spec):
        if layer["type"] in ("linear", "weightnorm_linear", "batchnorm"):
            if width is not None and int(layer["in"]) != width:
                raise ReprscopeError(f"'{prefix}.{j}' takes {layer['in']} inputs but the layer before it gives {width}; "
                                     "the checkpoint's head is inconsistent")
            width = int(layer.get("out", layer["in"]))


# -- strict loading -----------------------------------------------------------------------------------------


def load_strict(bundle: ModelBundle, mapped: Dict[str, torch.Tensor], origin: Mapping[str, str],
                what: str = "the model read from their shapes") -> None:
    """Load ``mapped`` (bundle key → tensor) into ``bundle``: every bundle weight must be given with its shape.

    Args:
        origin: bundle key → the key it had in the file, used in messages.

    Raises:
        ReprscopeError: listing missing, unexpected and shape-mismatched keys by their names in the file.
    """
    target = bundle.state_dict()
    # a counter, not a weight; BatchNorm fills it in when absent (checkpoints older than PyTorch 0.4.1)
    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    unexpected = [origin.get(k, k) for k in mapped if k not in target]
    mismatched = [f"{origin.get(k, k)} {list(v.shape)} (model expects {list(target[k].shape)})"
                  for k, v in mapped.items() if k in target and tuple(v.shape) != tuple(target[k].shape)]
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched[:8]) + (" …" if len(mismatched) > 8 else ""))
    if missing:
        problems.append("missing weights: " + ", ".join(missing[:8]) + (" …" if len(missing) > 8 else ""))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected[:8]) + (" …" if len(unexpected) > 8 else ""))
    if problems:
        raise ReprscopeError(f"checkpoint weights do not fit {what}: " + " | ".join(problems))
    bundle.load_state_dict(mapped, strict=True)
    bundle.eval()


def build_resnet_bundle(
    backbone: Mapping[str, torch.Tensor],
    heads: Mapping[str, Tuple[List[Dict[str, Any]], Dict[str, torch.Tensor]]],
    origin: Mapping[str, str],
    backbone_prefix: str,
    head_prefixes: Mapping[str, str],
    cifar_padding: int = 1,
    options: Optional[LoadOptions] = None,
) -> Tuple[ModelBundle, ResNetArch]:
    """A bundle from torchvision-named backbone weights and ``part → (spec, renamed weights)`` heads.

    Args:
        origin: stripped key → key in the file; ``backbone_prefix`` / ``head_prefixes`` say where each part
            sat among the stripped keys (for messages).
        options: ``--arch`` replaces the architecture read from the shapes.
    """
    arch = resnet_arch(backbone, options)
    bundle = ModelBundle(ResNetEncoder(arch, cifar_padding=cifar_padding), {p: s for p, (s, _) in heads.items()})
    mapped: Dict[str, torch.Tensor] = {}
    where: Dict[str, str] = {}
    bp = f"{backbone_prefix}." if backbone_prefix else ""
    for k, v in backbone.items():
        mapped[f"encoder.model.{k}"] = v
        where[f"encoder.model.{k}"] = origin.get(bp + k, bp + k)
    for part, (_, weights) in heads.items():
        for k, v in weights.items():
            src = f"{head_prefixes[part]}.{k}"
            if src not in origin and k.startswith("0."):  # a bare Linear (MoCo v1 fc) had no index
                src = f"{head_prefixes[part]}.{k[2:]}"
            mapped[f"{part}.{k}"] = v
            where[f"{part}.{k}"] = origin.get(src, src)
    load_strict(bundle, mapped, where, arch_what(arch.name, arch.forced))
    return bundle, arch


def build_resnet_with_heads(
    backbone: Mapping[str, torch.Tensor],
    heads: Mapping[str, Tuple[List[Dict[str, Any]], Dict[str, torch.Tensor], Mapping[str, str]]],
    origin: Mapping[str, str],
    backbone_prefix: str,
    cifar_padding: int = 1,
    options: Optional[LoadOptions] = None,
) -> Tuple[ModelBundle, ResNetArch]:
    """:func:`build_resnet_bundle` for heads given as ``part → (spec, weights, weight key → stripped key)``
    (the form of DINO heads and of ``vit.indexed_head``), so that errors name every weight as in the file."""
    ext = dict(origin)
    plain: Dict[str, Tuple[List[Dict[str, Any]], Dict[str, torch.Tensor]]] = {}
    prefixes: Dict[str, str] = {}
    for part, (spec, weights, where) in heads.items():
        tag = f"<{part}>"
        plain[part], prefixes[part] = (spec, dict(weights)), tag
        for k in weights:
            src = where.get(k, k)
            ext[f"{tag}.{k}"] = origin.get(src, src)
    return build_resnet_bundle(backbone, plain, ext, backbone_prefix, prefixes, cifar_padding=cifar_padding,
                               options=options)


def arch_what(name: str, forced: bool) -> str:
    """How a strict-load error names the architecture it tried."""
    return f"the architecture '{name}' given with --arch" if forced else f"the model read from their shapes ({name})"


def epoch_of(payload: Mapping[str, Any]) -> Optional[int]:
    e = payload.get("epoch")
    return int(e) if isinstance(e, int) and not isinstance(e, bool) else None


def unused(keys: Iterable[str], origin: Mapping[str, str], reason: str) -> List[str]:
    """``"<key in file>: <reason>"`` for each stripped key."""
    return [f"{origin.get(k, k)}: {reason}" for k in keys]
