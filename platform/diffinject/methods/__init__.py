"""Registered training methods; importing this package registers them all."""
from . import gce, vanilla  # noqa: F401  (registration side effect)
from .base import METHODS, Method, NonFiniteLoss, get_method, register_method, table_methods

__all__ = ["METHODS", "Method", "NonFiniteLoss", "get_method", "register_method", "table_methods"]
