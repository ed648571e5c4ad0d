"""DiffInject's stages and the generative baselines' synthesis as plain functions of a config and
data: stage 1 (biased classifier, top-K), stage 2 (diffusion training), stage 3 (h-space
injection in inject/, GAN synthesis in synthesis/, the registry of stage-3 kinds in kinds.py),
stage 4, and the quality report of synthetic sets (quality/). Imports methods/ and below; never
Ray or MLflow."""
