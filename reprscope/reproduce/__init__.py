"""``reprscope reproduce NAME``: the papers' findings as recipes (train → analyze → table, figures, summary)."""
from .base import RECIPES, SCALES, Finding, Recipe, RunSpec, register_recipe
from .runner import ReproduceResult, reevaluate, reproduce
from .recipes import center_vector, matrix_information, projector_geometry, rusak_content_style, vicreg_ablations  # noqa: F401,E501  (registers)

__all__ = ["RECIPES", "SCALES", "Finding", "Recipe", "ReproduceResult", "RunSpec", "reevaluate", "register_recipe", "reproduce"]
