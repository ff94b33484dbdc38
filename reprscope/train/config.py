"""Training configuration: sections, defaults, ``--set section.key=value`` and config files.

A resolved config is a plain JSON-able dict with the sections ``method``, ``data``, ``model`` (``backbone``,
``backbone_kwargs``, the head configs and their resolved layer specs), ``optim`` and ``train``. It is stored
verbatim in every checkpoint, so the checkpoint alone rebuilds the model, the data and the run.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..data import build_dataset
from ..errors import ReprscopeError
from ..methods import METHODS, build_method
from ..models.bundle import HEAD_PARTS
from ..models.encoders import build_backbone
from ..models.heads import head_out_dim, head_spec_from_config
from ..params import Param, resolve_params

OPTIM_PARAMS = [
    Param("name", "adamw", "choice", "optimiser (lars: SGD with layer-wise trust ratio, the SimCLR / BYOL / Barlow "
          "Twins / VICReg recipe)", choices=("adamw", "adam", "sgd", "lars")),
    Param("lr", 1e-3, "float", "peak learning rate", low=0, low_open=True),
    Param("weight_decay", 1e-4, "float", "weight decay", low=0),
    Param("momentum", 0.9, "float", "SGD momentum", low=0, high=1),
    Param("warmup_steps", 0, "int", "linear warm-up steps", low=0),
    Param("schedule", "cosine", "choice", "learning-rate schedule after warm-up", choices=("cosine", "constant")),
    Param("min_lr_ratio", 0.0, "float", "final lr as a fraction of the peak (cosine)", low=0, high=1),
    Param("warmup_epochs", None, "float", "linear warm-up in epochs (overrides warmup_steps)", low=0, nullable=True),
    Param("trust_coefficient", 0.001, "float", "LARS trust coefficient η", low=0, low_open=True),
    Param("exclude_bias_bn", True, "bool", "no weight decay (and no LARS adaptation) for biases and norm weights"),
    Param("lr_scaling", None, "choice", "scale lr with the batch: linear (lr·B/256) or none", choices=("linear",),
          nullable=True),
    Param("grad_clip", None, "float", "clip the gradient norm to this value", low=0, low_open=True, nullable=True),
]
TRAIN_PARAMS = [
    Param("batch_size", 256, "int", "samples per step (each gives two views), at most 2**20", low=2, high=1 << 20),
    Param("epochs", 10, "int", "epochs of the data set's nominal epoch length", low=1, high=1 << 31),
    Param("steps", None, "int", "total steps (overrides epochs)", low=1, high=1 << 40, nullable=True),
    Param("save_every", 1, "int", "checkpoint every N epochs (0: only last.pt)", low=0),
    Param("save_every_steps", None, "int", "checkpoint every N steps (overrides save_every)", low=1, nullable=True),
    Param("seed", 0, "int", "seed of the model initialisation and the training stream", low=0, high=2 ** 63 - 1),
    Param("device", "auto", "str", "cpu, cuda, cuda:1 … or auto"),
    Param("log_every", 10, "int", "log the loss every N steps", low=1),
    Param("amp", "auto", "choice", "autocast: bf16, fp16, none, or auto (bf16 on CUDA, none on CPU)",
          choices=("auto", "bf16", "fp16", "none")),
    Param("channels_last", True, "bool", "channels-last memory format for image models on CUDA"),
    Param("compile", False, "bool", "torch.compile the model"),
    Param("knn_every", None, "int", "online k-NN monitor every N steps (default: at every checkpoint; 0: off)",
          low=0, nullable=True),
    Param("knn_samples", 2000, "int", "held-out samples used by the online k-NN monitor (80% bank, 20% queries)", low=10),
    Param("data_on_device", True, "bool", "keep the data set on the training device where it supports it (GPU augmentation)"),
]
MODEL_KEYS = ("backbone",)
SECTIONS = ("method", "data", "backbone", "projector", "predictor", "optim", "train", "model")


#: Default backbones: vectors → the MLP; images → the small CNN, or a tiny ViT for the masked-image methods.
DEFAULT_VECTOR_BACKBONE = "mlp"
DEFAULT_IMAGE_BACKBONE = "convnet"
DEFAULT_VIT_BACKBONE = "vit_tiny_patch16_224"


def default_backbone(method: str, data: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """(backbone, backbone kwargs) that fit the data set and the method when none is named: the MLP for vector
    data, the small CNN (``convnet``) for images, and for a method that needs a ViT (MAE, U-MAE, M-MAE) timm's
    tiny ViT with patches of 4 pixels up to 64 px images (8 up to 128, else 16) — a 32×32 image is 8×8 patches."""
    from ..data import DATASETS

    ds = DATASETS.get(str(data.get("name", "")))
    if getattr(ds, "modality", "vector") != "image":
        return DEFAULT_VECTOR_BACKBONE, {}
    if not getattr(METHODS.get(method), "needs_vit", False):
        return DEFAULT_IMAGE_BACKBONE, {}
    res = data.get("resolution")
    if res is None:
        res = next((p.default for p in getattr(ds, "params", []) if p.name == "resolution"), 32)
    res = int(res)
    patch = 4 if res <= 64 else 8 if res <= 128 else 16
    while patch > 1 and res % patch:
        patch //= 2
    return DEFAULT_VIT_BACKBONE, {"patch_size": patch}


def default_config(method: str, data: Dict[str, Any], backbone: Optional[str] = None) -> Dict[str, Any]:
    """The starting point before files and ``--set`` overrides; ``backbone`` None: :func:`default_backbone`
    (whose kwargs are dropped again when a file or ``--set backbone=`` names another backbone)."""
    cls = METHODS.get(method)
    kwargs: Dict[str, Any] = {}
    auto = backbone is None
    if auto:
        backbone, kwargs = default_backbone(method, data)
    model = {"backbone": backbone, "backbone_kwargs": kwargs,
             **{p: copy.deepcopy(h) for p, h in cls.default_heads.items()}}
    if auto:
        model[AUTO_BACKBONE] = True
    return {
        "method": {"name": method},
        "data": dict(data),
        "model": model,
        "optim": copy.deepcopy(cls.default_optim),
        "train": copy.deepcopy(cls.default_train),
    }


#: Marks a backbone chosen by :func:`default_backbone` (removed when the config is resolved).
AUTO_BACKBONE = "_default_backbone"


def set_backbone(cfg: Dict[str, Any], name: str) -> None:
    """Name the backbone; the kwargs of an automatic default go with it (they belonged to that backbone)."""
    model = cfg["model"]
    if model.pop(AUTO_BACKBONE, False) and name != model.get("backbone"):
        model["backbone_kwargs"] = {}
    model["backbone"] = name


def load_config_file(path: str | Path) -> Dict[str, Any]:
    """A JSON or TOML file holding (part of) a config, in the same sections."""
    path = Path(path)
    if not path.is_file():
        raise ReprscopeError(f"config file '{path}' does not exist")
    try:
        text = path.read_text()
        if path.suffix.lower() == ".toml":
            import tomllib

            return tomllib.loads(text)
        return json.loads(text)
    except Exception as exc:
        raise ReprscopeError(f"cannot parse config file '{path}': {exc}") from None


def file_assignments(doc: Dict[str, Any]) -> List[Tuple[List[str], Any]]:
    """A config file's sections as ``--set`` assignments, so files and the command line share one path
    (validation, ``projector``/``predictor``/``backbone`` addressing the model, a new head kind resetting it).

    Within a head section ``kind`` comes first, so the settings that follow apply to the new kind.
    """
    out: List[Tuple[List[str], Any]] = []

    def walk(prefix: List[str], node: Any) -> None:
        # a dict below backbone.KEY is a value (a timm kwarg such as a dict), not a further section
        if isinstance(node, dict) and not (prefix[0] == "backbone" and len(prefix) >= 2):
            keys = sorted(node, key=lambda k: k != "kind")
            for k in keys:
                walk(prefix + [str(k)], node[k])
        else:
            out.append((prefix, node))

    for section, body in doc.items():
        if section not in SECTIONS:
            raise ReprscopeError(f"config file section '{section}' is not one of: {', '.join(SECTIONS)}")
        walk([section], body)
    return out


def _parse_value(value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


def apply_sets(cfg: Dict[str, Any], sets: Iterable[Tuple[List[str], Any]]) -> Dict[str, Any]:
    """Apply ``--set`` assignments. ``backbone.*``, ``projector.*`` and ``predictor.*`` address the model."""
    cfg = copy.deepcopy(cfg)
    for path, raw in sets:
        value = _parse_value(raw) if isinstance(raw, str) else raw
        head, rest = path[0], path[1:]
        if head not in SECTIONS:
            raise ReprscopeError(f"config key '{'.'.join(path)}' must start with one of: {', '.join(SECTIONS[:-1])}", arg="config")
        if head == "backbone" and not rest:
            set_backbone(cfg, value)
            continue
        if head == "backbone":
            cfg["model"].pop(AUTO_BACKBONE, None)  # kwargs set by hand: the backbone is the user's choice now
            target = cfg["model"].setdefault("backbone_kwargs", {})
        elif head in HEAD_PARTS:
            if not rest:
                if value in (None, "none", "None"):
                    cfg["model"][head] = None
                    continue
                cfg["model"][head] = {"kind": value}
                continue
            if cfg["model"].get(head) is None:
                cfg["model"][head] = {}
            if rest == ["kind"] and cfg["model"][head].get("kind") != value:
                cfg["model"][head] = {"kind": value}  # another kind: the old kind's settings do not apply
                continue
            target = cfg["model"][head]
        elif head == "model":
            target = cfg["model"]
        else:
            target = cfg.setdefault(head, {})
        for key in rest[:-1]:
            target = target.setdefault(key, {})
        if not rest:
            raise ReprscopeError(f"config key '{head}' needs a field, e.g. {head}.KEY=VALUE", arg="config")
        target[rest[-1]] = value
    return cfg


def merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve_config(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Validate every section and fill defaults; returns the config stored in checkpoints.

    Raises:
        ReprscopeError: an unknown method, data set, backbone, head kind or parameter, or a bad value.
    """
    cfg = copy.deepcopy(cfg)
    method_cfg = dict(cfg.get("method") or {})
    method = build_method(method_cfg.pop("name"), method_cfg)
    dataset = build_dataset(cfg["data"])
    model = cfg["model"]
    model.pop(AUTO_BACKBONE, None)
    in_shape = list(dataset.input_shape)
    encoder = build_backbone(model["backbone"], in_shape, model.get("backbone_kwargs"))
    heads: Dict[str, Any] = {}
    d = int(encoder.num_features)
    for part in HEAD_PARTS:
        head_cfg = model.get(part)
        spec = head_spec_from_config(head_cfg, d, part)
        if spec:
            heads[part] = spec
            d = head_out_dim(spec, d)
    method.check_output_dim(d)
    method.check_model(heads, int(encoder.num_features))
    out = {
        "method": {"name": method.name, **method.cfg},
        "data": dataset.spec(),
        "model": {"backbone": model["backbone"], "backbone_kwargs": dict(model.get("backbone_kwargs") or {}),
                  **{p: model.get(p) for p in HEAD_PARTS}, "heads": heads, "in_shape": in_shape},
        "optim": resolve_params("optim", OPTIM_PARAMS, cfg.get("optim") or {}),
        "train": resolve_params("train", TRAIN_PARAMS, cfg.get("train") or {}),
    }
    return out


def total_steps(cfg: Dict[str, Any]) -> int:
    t = cfg["train"]
    if t.get("steps"):
        return int(t["steps"])
    return int(t["epochs"]) * steps_per_epoch(cfg)


def steps_per_epoch(cfg: Dict[str, Any]) -> int:
    return max(1, math.ceil(int(cfg["data"]["epoch_size"]) / int(cfg["train"]["batch_size"])))
