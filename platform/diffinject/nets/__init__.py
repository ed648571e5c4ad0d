"""Networks and the pure math around them: the classifiers, the generalized cross-entropy, metrics,
LPIPS, the diffusion U-Nets with their schedules and h-space hooks (diffusion/), the GANs
(gan/) and the injection formulas (slerp, timestep grids; the paper's equations). Imports
core/ and data/ only; never Ray or MLflow."""
