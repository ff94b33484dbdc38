"""The bundled trainer."""
from .config import apply_sets, default_config, load_config_file, merge, resolve_config, total_steps
from .trainer import TrainResult, train

__all__ = ["TrainResult", "apply_sets", "default_config", "load_config_file", "merge", "resolve_config", "total_steps", "train"]
