"""reprscope: post-hoc representation analysis for self-supervised learning."""
__version__ = "0.1.0"
