"""Settings shared by the image recipes: the cpu scale trains a small CNN on the procedural ``shapes`` images
(no download) at 16×16; the long scale trains the same for 2400 steps instead of 240 (10× longer); the gpu scale is the papers' CIFAR
setting with a CIFAR-stem ResNet-18."""
from __future__ import annotations

from typing import Any, Dict, Tuple

from ..base import pick


def image_setting(scale: str, data_root: str | None, dataset: str = "cifar100") -> Tuple[Dict[str, Any], str, Dict[str, Any]]:
    """``(data, backbone, sets)`` for an image run at ``scale``."""
    if scale == "gpu":
        root = data_root or "data"
        return ({"name": dataset, "path": f"{root}/{dataset}", "split": "train"}, "resnet18",
                {"backbone.cifar_stem": True, "train.batch_size": 512, "train.epochs": 500, "train.save_every": 50})
    steps = pick(scale, 8, 240, 0, long=2400)
    return ({"name": "shapes", "resolution": 16, "eval_size": pick(scale, 256, 2000, 0)}, "convnet",
            {"backbone.width": pick(scale, 4, 16, 0), "backbone.blocks": 3, "train.batch_size": pick(scale, 32, 128, 0),
             "train.steps": steps, "train.save_every_steps": max(1, steps // 4), "train.knn_every": 0,
             "optim.name": "adamw", "optim.lr": 2e-3, "optim.warmup_steps": 0, "optim.warmup_epochs": None})
