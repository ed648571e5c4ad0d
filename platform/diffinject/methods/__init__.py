"""The training methods: the interface (base.Method), one small class per method, the registry
(registry.METHODS, in Table 1's row order) and training one (registry.train_method). The names below are loaded on first
use, so importing the package loads no torch."""
from diffinject.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "METHODS": "diffinject.methods.registry",
    "Method": "diffinject.methods.base",
    "NonFiniteLoss": "diffinject.core.errors",
    "get_method": "diffinject.methods.registry",
    "method_classifier": "diffinject.methods.registry",
    "stage1_config": "diffinject.methods.registry",
    "table_methods": "diffinject.methods.registry",
    "train_method": "diffinject.methods.registry",
})
