"""``reprscope inspect``: what the loader made of a checkpoint, in words."""
from __future__ import annotations

from collections import Counter
from typing import List

from .formats.base import LoadedModel


def _prefixes(keys: List[str], depth: int = 2) -> str:
    c = Counter(".".join(k.split(".")[:depth]) for k in keys)
    return ", ".join(f"{p}.* ({n})" for p, n in sorted(c.items()))


def describe(model: LoadedModel) -> List[str]:
    """Lines: format, method, architecture, parts with parameter counts and key prefixes, layers, unused keys."""
    b = model.bundle
    cfg = model.config or {}
    mcfg = cfg.get("model", {})
    lines = [
        f"file:         {model.source}",
        f"sha256:       {model.sha256}",
        f"format:       {model.format}",
        f"method:       {model.method}",
        f"architecture: {mcfg.get('backbone', type(b.encoder).__name__)} {mcfg.get('backbone_kwargs') or ''}".rstrip(),
        f"step:         {model.step if model.step is not None else '-'}",
    ]
    if model.dataset:
        lines.append(f"data:         {model.dataset}")
    lines.append("parts:")
    state = b.state_dict()
    for part in ["encoder", *b.head_specs]:
        keys = [k for k in state if k.startswith(part + ".")]
        n = sum(state[k].numel() for k in keys)
        lines.append(f"  {part:10s} {n:>12,d} values  keys {_prefixes(keys)}")
        if part in b.head_specs:
            lines.append(f"  {'':10s} layers: " + " → ".join(
                s["type"] + (f"({s['in']}→{s['out']})" if "out" in s else "") for s in b.head_specs[part]))
    lines.append("extractable layers: " + ", ".join(f"{i.name} [{i.space}]" for i in b.layer_infos()))
    if model.unused_keys:
        lines.append(f"unused keys ({len(model.unused_keys)}):")
        lines.extend(f"  {k}" for k in model.unused_keys[:50])
        if len(model.unused_keys) > 50:
            lines.append(f"  … and {len(model.unused_keys) - 50} more")
    else:
        lines.append("unused keys: none (every tensor was loaded)")
    return lines
