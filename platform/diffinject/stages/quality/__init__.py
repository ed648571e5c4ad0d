"""Quality report of a synthetic set: two scoring oracles trained on real images read each
synthetic image's class and bias. Ground-truth bias labels are used only here, for scoring
(like precision@K); the oracles never train DiffInject or select a model."""
