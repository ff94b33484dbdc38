"""The bundled trainer."""
from .config import apply_sets, default_config, file_assignments, load_config_file, merge, resolve_config, total_steps
from .trainer import TrainResult, train

__all__ = ["TrainResult", "apply_sets", "default_config", "file_assignments", "load_config_file", "merge", "resolve_config", "total_steps", "train"]
