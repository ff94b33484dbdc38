"""Format registry and the safe file reader shared by every format."""
from __future__ import annotations

import argparse
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from ..errors import ReprscopeError
from ..io_utils import sha256_file
from ..models.bundle import ModelBundle
from ..registry import Registry

FORMATS: Registry = Registry("checkpoint format")


@dataclass
class LoadedModel:
    """What a checkpoint resolves to, whatever its format (the one model contract plus provenance)."""

    bundle: ModelBundle
    format: str
    method: str
    config: Dict[str, Any]
    source: str
    sha256: str
    step: Optional[int] = None
    epoch: Optional[int] = None
    dataset: Optional[Dict[str, Any]] = None
    unused_keys: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class FormatSpec:
    name: str
    detect: Callable[[Dict[str, Any]], bool]
    build: Callable[[Dict[str, Any]], Dict[str, Any]]
    summary: str


def register_format(name: str, *, detect: Callable[[Dict[str, Any]], bool], summary: str) -> Callable:
    """Decorator registering ``build(payload) -> dict(bundle=..., method=..., config=..., ...)`` for a format."""

    def deco(build):
        FORMATS.register(name)(FormatSpec(name, detect, build, summary))
        return build

    return deco


def read_checkpoint_file(path: os.PathLike | str) -> Any:
    """``torch.load(path, weights_only=True)`` with every failure turned into one clear line."""
    path = Path(path)
    if not path.exists():
        raise ReprscopeError(f"checkpoint '{path}' does not exist")
    if path.is_dir():
        raise ReprscopeError(f"'{path}' is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise ReprscopeError(f"'{path}' is empty; expected a PyTorch checkpoint (.pt/.pth)")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
            # a plain pickle (not a torch.save archive) makes torch warn about its protocol before we refuse it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # argparse.Namespace is inert data (DINO, MAE, timm save their args as one); everything else that
            # is not a tensor or a plain container is refused
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        # torch wraps the reason in boilerplate (which advises weights_only=False); keep only the reason
        lines = [l.strip() for l in text.splitlines() if l.strip()]
        reasons = [l.split("WeightsUnpickler error:", 1)[1].strip() for l in lines if "WeightsUnpickler error:" in l]
        reasons = [r for r in reasons if r] or [l for l in lines if "unsupported" in l.lower()] or lines[:1]
        msg = reasons[0].split(". Please use")[0] if reasons else type(exc).__name__
        if "unsupported global" in text.lower():
            raise ReprscopeError(
                f"'{path}' needs arbitrary unpickling, which reprscope refuses (it could run code): {msg.strip()[:200]}"
            ) from None
        raise ReprscopeError(f"'{path}' is not a readable PyTorch checkpoint ({msg[:200]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError, TypeError, AttributeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ReprscopeError(f"'{path}' is not a readable PyTorch checkpoint ({msg[:200]}); expected a file written by torch.save") from None


def load_checkpoint(path: os.PathLike | str, fmt: Optional[str] = None) -> LoadedModel:
    """Detect the format of ``path`` (or use ``fmt``) and rebuild its model bundle."""
    payload = read_checkpoint_file(path)
    if not isinstance(payload, dict):
        raise ReprscopeError(f"'{path}' holds a {type(payload).__name__}, not a checkpoint dict")
    forced = fmt is not None
    if fmt is None:
        hits = [n for n in FORMATS.names() if FORMATS.get(n).detect(payload)]
        if not hits:
            keys = ", ".join(list(payload)[:8])
            raise ReprscopeError(
                f"'{path}' is a PyTorch file but not a checkpoint format reprscope knows (top-level keys: {keys}); "
                f"known formats: {', '.join(FORMATS.names())}"
            )
        fmt = hits[0]
    spec: FormatSpec = FORMATS.get(fmt)
    try:
        built = spec.build(payload)
    except ReprscopeError as exc:
        if not forced:
            raise
        raise ReprscopeError(f"'{path}' does not fit the format '{fmt}' given with --format: {exc}") from None
    return LoadedModel(source=str(path), sha256=sha256_file(path), format=fmt, **built)
