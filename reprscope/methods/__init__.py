"""Training methods: each a registered unit (loss + default heads + hooks)."""
from .base import METHODS, Method, build_method
from . import simclr  # noqa: F401  (registers)
from . import byol  # noqa: F401  (registers)
from . import simsiam  # noqa: F401  (registers)
from . import barlow  # noqa: F401  (registers)
from . import vicreg  # noqa: F401  (registers)
from . import spectral  # noqa: F401  (registers)
from . import simple  # noqa: F401  (registers)
from . import mae  # noqa: F401  (registers mae, umae, mmae)
from . import swav  # noqa: F401  (registers)
from . import dino  # noqa: F401  (registers)

__all__ = ["METHODS", "Method", "build_method"]
