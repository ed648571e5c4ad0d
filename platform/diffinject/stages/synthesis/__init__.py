"""Stage code of the GAN stage-3 kinds (no Ray here; cluster.train_jobs and cluster.synthesis_job call it):
`stylegan2_adapt` (A²: source StyleGAN2, CDC few-shot adaptation, W projection of originals)
and `fastgan` (AmpliBias: one FastGAN per class on its top-K samples)."""
