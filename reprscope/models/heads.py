"""Projector / predictor heads declared as lists of layer specs (stored in an embedding store's ``/modules``).

A head is an ``nn.Sequential`` built from a JSON list such as::

    [{"type": "linear", "in": 512, "out": 2048, "bias": false},
     {"type": "batchnorm", "in": 2048, "affine": true},
     {"type": "relu"},
     {"type": "linear", "in": 2048, "out": 128, "bias": true}]

so that the same spec rebuilds the head from a checkpoint, from the ``/modules`` group of an .h5 file, or
from a checkpoint of another library. Head *kinds* (``linear``, ``mlp`` …) are registered builders that turn
a few numbers into such a spec (after lightly's ``heads.py``: heads are lists of blocks, not classes).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..errors import ReprscopeError
from ..params import Param, resolve_params
from ..registry import Registry

HEADS: Registry = Registry("head")

ACTIVATIONS = ("relu", "gelu", "leaky_relu", "simplicial")


class L2Norm(nn.Module):
    """Row-wise ℓ2 normalisation (the last op of DINO's head before its prototypes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=-1)


class SimplicialSoftmax(nn.Module):
    """Simplicial embedding (Lavoie et al. 2022, arXiv:2204.00616): the vector split into groups of
    ``simplex_dim`` values, each group a softmax at ``temperature`` (byol-pytorch's ``SEM``)."""

    def __init__(self, simplex_dim: int, temperature: float):
        super().__init__()
        self.simplex_dim, self.temperature = int(simplex_dim), float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x.reshape(*x.shape[:-1], -1, self.simplex_dim)
        return (g / self.temperature).softmax(dim=-1).reshape(x.shape)


def build_layer(spec: Dict[str, Any]) -> nn.Module:
    t = spec.get("type")
    if t == "linear":
        return nn.Linear(int(spec["in"]), int(spec["out"]), bias=bool(spec.get("bias", True)))
    if t == "weightnorm_linear":
        return nn.utils.parametrizations.weight_norm(nn.Linear(int(spec["in"]), int(spec["out"]), bias=bool(spec.get("bias", False))))
    if t == "batchnorm":
        return nn.BatchNorm1d(int(spec["in"]), affine=bool(spec.get("affine", True)))
    if t == "relu":
        return nn.ReLU()
    if t == "gelu":
        return nn.GELU()
    if t == "leaky_relu":
        return nn.LeakyReLU(float(spec.get("slope", 0.01)))
    if t == "l2norm":
        return L2Norm()
    if t == "simplicial":
        return SimplicialSoftmax(int(spec["simplex_dim"]), float(spec.get("temperature", 0.1)))
    raise ReprscopeError(f"unknown head layer type {t!r}; valid: {', '.join(_NEEDS)}")


#: Most units of one head layer read from a file (a width beyond is refused before anything is built).
MAX_WIDTH = 1 << 20

_NEEDS = {"linear": ("in", "out"), "weightnorm_linear": ("in", "out"), "batchnorm": ("in",), "relu": (), "gelu": (),
          "leaky_relu": (), "l2norm": (), "simplicial": ("in", "simplex_dim")}


def spec_problem(spec: Any) -> Optional[str]:
    """What is wrong with a layer-spec list read from a file (None when nothing): a known type for every
    layer and whole-number widths in [1, MAX_WIDTH] where the type needs them."""
    if not isinstance(spec, list):
        return "a head spec must be a list of layer mappings"
    for i, layer in enumerate(spec):
        if not isinstance(layer, dict) or layer.get("type") not in _NEEDS:
            return f"layer {i} has no known type (valid: {', '.join(_NEEDS)})"
        for k in _NEEDS[layer["type"]]:
            v = layer.get(k)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_WIDTH:
                return f"layer {i} ({layer['type']}) needs '{k}' as a whole number in [1, {MAX_WIDTH}], got {v!r:.40}"
        if layer["type"] == "simplicial":
            t = layer.get("temperature", 0.1)
            if layer["in"] % layer["simplex_dim"] or not isinstance(t, (int, float)) or isinstance(t, bool) or not t > 0:
                return f"layer {i} (simplicial) needs simplex_dim dividing 'in' and a positive temperature"
    return None


def build_head(spec: List[Dict[str, Any]]) -> nn.Sequential:
    """``nn.Sequential`` from a layer-spec list (empty list → identity head)."""
    return nn.Sequential(*[build_layer(s) for s in spec])


def head_out_dim(spec: List[Dict[str, Any]], in_dim: int) -> int:
    d = in_dim
    for s in spec:
        if s["type"] in ("linear", "weightnorm_linear"):
            d = int(s["out"])
    return d


def activation_positions(spec: List[Dict[str, Any]]) -> List[int]:
    """Indices of the layers after which a hidden representation of the head is read (its activations)."""
    return [i for i, s in enumerate(spec) if s["type"] in ACTIVATIONS]


# -- registered head kinds ---------------------------------------------------------------------------------


@HEADS.register("none", params=[])
def none_head(in_dim: int) -> List[Dict[str, Any]]:
    """No head: the representation itself."""
    return []


@HEADS.register(
    "linear",
    params=[Param("out_dim", 128, "int", "output dimension", low=1), Param("bias", False, "bool", "use a bias")],
)
def linear_head(in_dim: int, out_dim: int = 128, bias: bool = False) -> List[Dict[str, Any]]:
    """A single linear map (Cosentino et al. 2022's linear projector; Rusak et al. 2022's last encoder layer)."""
    return [{"type": "linear", "in": in_dim, "out": out_dim, "bias": bias}]


@HEADS.register(
    "mlp",
    params=[
        Param("out_dim", 128, "int", "output dimension", low=1),
        Param("hidden_dim", 2048, "int", "width of the hidden layers", low=1),
        Param("layers", 2, "int", "number of linear layers", low=1),
        Param("bn", True, "bool", "BatchNorm after each hidden linear layer"),
        Param("last_bn", False, "bool", "affine-free BatchNorm on the output (SimSiam / Barlow Twins)"),
        Param("activation", "relu", "choice", "hidden activation", choices=ACTIVATIONS),
        Param("slope", 0.01, "float", "slope of leaky_relu", low=0),
        Param("bias", True, "bool", "bias on the last linear layer"),
    ],
)
def mlp_head(in_dim: int, out_dim: int = 128, hidden_dim: int = 2048, layers: int = 2, bn: bool = True,
             last_bn: bool = False, activation: str = "relu", slope: float = 0.01, bias: bool = True) -> List[Dict[str, Any]]:
    """MLP head: (linear → [BN] → act) × (layers-1) → linear [→ BN] (SimCLR v1 with layers=2)."""
    spec: List[Dict[str, Any]] = []
    d = in_dim
    for _ in range(layers - 1):
        spec.append({"type": "linear", "in": d, "out": hidden_dim, "bias": not bn})
        if bn:
            spec.append({"type": "batchnorm", "in": hidden_dim, "affine": True})
        act: Dict[str, Any] = {"type": activation}
        if activation == "leaky_relu":
            act["slope"] = slope
        spec.append(act)
        d = hidden_dim
    spec.append({"type": "linear", "in": d, "out": out_dim, "bias": bias and not last_bn})
    if last_bn:
        spec.append({"type": "batchnorm", "in": out_dim, "affine": False})
    return spec


def head_spec_from_config(cfg: Optional[Dict[str, Any]], in_dim: int, part: str) -> List[Dict[str, Any]]:
    """Turn ``{"kind": "mlp", "out_dim": 128, ...}`` (or an explicit ``{"spec": [...]}``) into a layer-spec list."""
    if not cfg:
        return []
    cfg = dict(cfg)
    if "spec" in cfg:
        return list(cfg["spec"])
    kind = str(cfg.pop("kind", "linear"))
    fn = HEADS.get(kind)
    params = resolve_params(f"{part} head '{kind}'", HEADS.meta(kind)["params"], cfg)
    return fn(in_dim, **params)


def spec_of_module(module: nn.Module) -> Optional[tuple]:
    """The layer-spec list and ``nn.Sequential``-named float parameters of a user's head, or None when it is
    not made only of the layer types above (``nn.Linear``, ``nn.BatchNorm1d``, ReLU/GELU/LeakyReLU,
    :class:`L2Norm`, ``nn.Identity`` and nested ``nn.Sequential``s of them; a single such layer is a head too).

    The inverse of :func:`build_head`: ``build_head(spec)`` loaded with the returned parameters computes what
    ``module`` computes (in eval mode), so the ``weights`` and ``tangent`` analyzers work on a user's projector.
    """
    flat: List[nn.Module] = []

    def walk(m: nn.Module) -> bool:
        if isinstance(m, nn.Sequential):
            return all(walk(c) for c in m)
        if isinstance(m, nn.Identity):
            return True
        flat.append(m)
        return True

    walk(module)
    spec: List[Dict[str, Any]] = []
    state: Dict[str, Any] = {}
    for i, m in enumerate(flat):
        if type(m) is nn.Linear:
            spec.append({"type": "linear", "in": m.in_features, "out": m.out_features, "bias": m.bias is not None})
        elif type(m) is nn.BatchNorm1d and m.track_running_stats and m.eps == 1e-5:  # build_layer's eps
            spec.append({"type": "batchnorm", "in": m.num_features, "affine": m.affine})
        elif type(m) is nn.ReLU:
            spec.append({"type": "relu"})
        elif type(m) is nn.GELU and m.approximate == "none":
            spec.append({"type": "gelu"})
        elif type(m) is nn.LeakyReLU:
            spec.append({"type": "leaky_relu", "slope": float(m.negative_slope)})
        elif type(m) is L2Norm:
            spec.append({"type": "l2norm"})
        else:
            return None
        for k, v in m.state_dict().items():
            if not k.endswith("num_batches_tracked"):
                state[f"{i}.{k}"] = v.detach().cpu().numpy()
    return spec, state
