"""The method contract: a method is backbone + heads + loss composed, not a class hierarchy per variant.

A method unit declares its hyper-parameters (``--set method.KEY=VALUE``), the heads it needs by default, and
a ``training_step`` that turns a list of views into a loss. Ablations are configuration of the same unit.
"""
from __future__ import annotations

import abc
from typing import Any, ClassVar, Dict, List, Tuple

import torch
from torch import nn

from ..params import Param, resolve_params
from ..registry import Registry

METHODS: Registry = Registry("method")


class Method(nn.Module, metaclass=abc.ABCMeta):
    """Base of the registered methods.

    Class attributes:
        name: registry name; ``params``: declared hyper-parameters; ``default_heads``: head configs by part
        (``{"projector": {"kind": "mlp", ...}}``), overridable with ``--set model.projector.KEY=VALUE``.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    params: ClassVar[List[Param]] = []
    default_heads: ClassVar[Dict[str, Dict[str, Any]]] = {}

    def __init__(self, **given: Any):
        super().__init__()
        self.cfg: Dict[str, Any] = resolve_params(f"method {self.name}", self.params, given)

    @abc.abstractmethod
    def training_step(self, bundle: nn.Module, views: List[torch.Tensor], step: int, total_steps: int) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Loss for one batch of views and the values to log."""

    def check_output_dim(self, dim: int) -> None:
        """Validate hyper-parameters that depend on the embedding width (e.g. per-dimension temperatures)."""

    def after_step(self, bundle: nn.Module, step: int, total_steps: int) -> None:
        """Hook after the optimiser step (EMA updates, schedules). Default: nothing."""


def build_method(name: str, cfg: Dict[str, Any] | None = None) -> Method:
    return METHODS.get(name)(**dict(cfg or {}))
