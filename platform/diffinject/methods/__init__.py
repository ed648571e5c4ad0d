"""Registered training methods; importing this package registers them all."""
from . import gce, vanilla, lff, disent, generative, diffinject  # noqa: F401, I001  (registration order = table order)
from .base import METHODS, Method, NonFiniteLoss, get_method, register_method, table_methods

__all__ = ["METHODS", "Method", "NonFiniteLoss", "get_method", "register_method", "table_methods"]
