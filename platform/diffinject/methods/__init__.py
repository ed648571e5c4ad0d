"""Registered training methods; importing this package registers them all."""
from diffinject.methods import gce, vanilla, lff, disent, generative, diffinject  # noqa: F401, I001  (registration order = table order)
from diffinject.core.errors import NonFiniteLoss
from diffinject.methods.base import (METHODS, Method, get_method, method_classifier, register_method, stage1_config,
                                     table_methods)

__all__ = ["METHODS", "Method", "NonFiniteLoss", "get_method", "method_classifier", "register_method", "stage1_config",
           "table_methods"]
