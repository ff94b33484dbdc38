"""Extraction to the HDF5 embedding store and read access to it."""
from .extractor import extract, view_names
from .store import Store, StoreWriter

__all__ = ["Store", "StoreWriter", "extract", "view_names"]
