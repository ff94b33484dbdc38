"""What ``reprscope list`` prints: one line per registered unit, read from the registries."""
from __future__ import annotations

from typing import List

from .analyzers import ANALYZERS
from .data import DATASETS
from .errors import ReprscopeError
from .formats import FORMATS
from .methods import METHODS
from .models import BACKBONES, HEADS
from .params import format_params

KINDS = ("methods", "analyzers", "datasets", "formats", "backbones", "heads", "augmentations", "recipes")


def catalog(kind: str) -> List[str]:
    """Lines for ``reprscope list KIND``."""
    if kind == "methods":
        def backbone(n: str) -> str:
            if getattr(METHODS.get(n), "needs_vit", False):
                return "default backbone: a tiny ViT (patches of 4 px up to 64 px images)"
            return "default backbone: mlp for vectors, convnet for images"

        return [f"{n:12s} {METHODS.get(n).summary}; {backbone(n)}  [{format_params(METHODS.get(n).all_params())}]"
                for n in METHODS.names()]
    if kind == "analyzers":
        lines = []
        for n in ANALYZERS.names():
            a = ANALYZERS.get(n)
            needs = f" needs: {', '.join(a.needs)};" if a.needs else ""
            split = "split over torchrun processes" if a.split else "rank 0 alone under torchrun"
            lines.append(f"{n:16s} {a.summary} (paper {a.paper});{needs} {split}; "
                         f"params: {format_params(a.params) or '-'}")
        return lines
    if kind == "datasets":
        return [f"{n:10s} {DATASETS.get(n).summary}  [{format_params(DATASETS.get(n).all_params())}]" for n in DATASETS.names()]
    if kind == "formats":
        return [f"{n:10s} {FORMATS.get(n).summary}" for n in FORMATS.names()]
    if kind == "backbones":
        return [f"{n:10s} [{format_params(BACKBONES.meta(n)['params'])}]" for n in BACKBONES.names()] + [
            "(any timm model name, e.g. resnet18, vit_small_patch16_224)"]
    if kind == "heads":
        return [f"{n:10s} [{format_params(HEADS.meta(n)['params'])}]" for n in HEADS.names()]
    if kind == "augmentations":
        from .data.augment import AUGMENTATIONS

        return [f"{n:16s} {AUGMENTATIONS.get(n).summary} ({AUGMENTATIONS.get(n).source})" for n in AUGMENTATIONS.names()]
    if kind == "recipes":
        from .reproduce import RECIPES

        return [f"{n:24s} paper {RECIPES.meta(n).get('paper', '')}: {RECIPES.meta(n).get('summary', '')}" for n in RECIPES.names()]
    raise ReprscopeError(f"unknown list '{kind}'; choose one of: {', '.join(KINDS)}")
