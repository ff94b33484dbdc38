"""``reprscope inspect``: what the loader made of a checkpoint, in words."""
from __future__ import annotations

import torch

import os
from collections import Counter
from typing import Dict, List, Optional, Tuple

from .errors import ReprscopeError
from .formats.base import FORMATS, LoadedModel, LoadOptions, load_checkpoint, payload_summary, read_checkpoint


def _prefixes(keys: List[str], depth: int = 2) -> str:
    c = Counter(".".join(k.split(".")[:depth]) for k in keys)
    return ", ".join(f"{p}.* ({n})" for p, n in sorted(c.items()))


def _group_unused(entries: List[str]) -> List[str]:
    """``"key: reason"`` entries, those sharing a reason and a two-part key prefix folded into one line."""
    groups: Dict[Tuple[str, str], List[str]] = {}
    for entry in entries:
        key, _, reason = entry.partition(": ")
        parts = key.split(".")
        prefix = ".".join(parts[:2]) if len(parts) > 2 else key
        groups.setdefault((prefix, reason), []).append(key)
    out = []
    for (prefix, reason), keys in groups.items():
        out.append(f"  {keys[0]}: {reason}" if len(keys) == 1 else f"  {prefix}.* ({len(keys)} tensors): {reason}")
    return out


def _architecture(model: LoadedModel) -> List[str]:
    cfg = model.config or {}
    mcfg = cfg.get("model", {})
    if mcfg.get("backbone"):  # a reprscope checkpoint: its config names the backbone
        return [f"architecture: {mcfg['backbone']} {mcfg.get('backbone_kwargs') or ''}".rstrip()]
    name = cfg.get("arch") or type(model.bundle.encoder).__name__
    lines = [f"architecture: {name} ({cfg.get('arch_source', 'read from the weights')})"]
    kw = cfg.get("timm_kwargs") or {}
    if kw:
        lines.append("  timm kwargs: " + ", ".join(f"{k}={v}" for k, v in kw.items()))
    if cfg.get("num_heads_source"):
        blocks = getattr(getattr(model.bundle.encoder, "model", None), "blocks", None)
        built = getattr(getattr(blocks[0], "attn", None), "num_heads", "?") if blocks is not None and len(blocks) else "?"
        lines.append(f"  attention heads: {kw.get('num_heads', built)} ({cfg['num_heads_source']})")
    if cfg.get("cifar_stem"):
        lines.append(f"  CIFAR stem: 3×3 conv1, no max-pool (padding {cfg.get('cifar_padding') or 1})")
    return lines


def _vit_layers(bundle) -> List[str]:
    """What each stored layer of a timm ViT encoder is (the pooling reprscope applies)."""
    enc = getattr(bundle, "encoder", None)
    vit = getattr(enc, "model", None)
    if vit is None or not hasattr(vit, "blocks") or not hasattr(vit, "patch_embed"):
        return []
    pool = getattr(vit, "global_pool", "token")
    prefix = int(getattr(vit, "num_prefix_tokens", 1))
    if pool == "token":
        top = ("the class token after the final norm (--pool cls; as DINO's, iBOT's and MoCo v3's linear "
               "evaluation read it)")
        blocks = "the class token of block N's output"
    elif pool in ("avg", "avgmax", "max"):
        fc = "fc_norm" if not isinstance(getattr(vit, "fc_norm", None), torch.nn.Identity) else "no norm after"
        top = (f"the {pool} pool of the patch tokens ({'prefix tokens left out' if prefix else 'no prefix tokens'}), "
               f"{'then fc_norm' if fc == 'fc_norm' else 'after the final norm'} (--pool mean; as MAE's fine-tuning "
               "and I-JEPA's evaluation read it)")
        blocks = "the mean of the patch tokens of block N's output" + (" (prefix tokens left out)" if prefix else "")
    else:
        top, blocks = f"timm's '{pool}' pooling", "the mean of all tokens of block N's output"
    return ["ViT layers: encoder = " + top + f"; encoder.model.blocks.N = {blocks}, before the final norm"]


def describe(model: LoadedModel) -> List[str]:
    """Lines: format, method, architecture, branch, preprocessing, parts with parameter counts and key prefixes,
    layers, unused keys."""
    b = model.bundle
    lines = [
        f"file:         {model.source} ({model.file_type})",
        f"sha256:       {model.sha256}",
        f"format:       {model.format}",
        f"method:       {model.method}",
        *_architecture(model),
        f"step:         {model.step if model.step is not None else '-'}",
    ]
    if model.epoch is not None:
        lines.append(f"epoch:        {model.epoch}")
    if model.dataset:
        lines.append(f"data:         {model.dataset}")
    lines.append(f"branch:       {model.branch or '-'}" + (" (chosen with --branch)" if model.options.branch else " (default)"))
    for name, where in model.branches.items():
        mark = "*" if name == model.branch else " "
        lines.append(f"  {mark} {name:9s} {where}")
    if model.preprocess is not None:
        lines.append(f"preprocessing: {model.preprocess.describe()}")
        lines.append(f"  mean {list(model.preprocess.mean)}, std {list(model.preprocess.std)}; applied to image --data "
                     "unless --preprocess data or --set data.KEY=...")
    else:
        lines.append("preprocessing: none (not an image model)")
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
    lines.extend(_vit_layers(b))
    if model.unused_keys:
        lines.append(f"unused keys ({len(model.unused_keys)}):")
        groups = _group_unused(model.unused_keys)
        lines.extend(groups[:50])
        if len(groups) > 50:
            lines.append(f"  … and {len(groups) - 50} more groups")
    else:
        lines.append("unused keys: none (every tensor was loaded)")
    if model.skipped_globals:
        lines.append(f"skipped objects: {', '.join(model.skipped_globals[:10])}"
                     f"{' …' if len(model.skipped_globals) > 10 else ''} (named by the file outside the tensors, e.g. "
                     "an optimizer's filter functions; read as inert stand-ins, never imported or called)")
    return lines


def inspect_checkpoint(path: os.PathLike | str, fmt: Optional[str] = None, options: Optional[LoadOptions] = None
                       ) -> Tuple[List[str], Optional[ReprscopeError]]:
    """``(lines, error)``: :func:`describe` of the loaded checkpoint; or, when the file is readable but does not
    load (an unknown layout, weights that do not fit), what it holds (:func:`payload_summary`) and the error."""
    if fmt is not None:
        try:
            FORMATS.get(fmt)
        except ReprscopeError as exc:  # a mistyped --format: nothing to show about the file
            return [], exc
    try:
        return describe(load_checkpoint(path, fmt, options)), None
    except ReprscopeError as exc:
        try:
            payload, file_type = read_checkpoint(path)
        except ReprscopeError:
            return [], exc
        return [f"file:         {path} ({file_type}; not loaded, see the error)", *payload_summary(payload)], exc
