"""The Ray layer: the Ray session (ensure_ray, what GPUs the cluster can provide), shipping job
inputs between nodes, cluster-wide locks, and the Ray Train / Ray Data jobs that run the stages.
Imports stages/, tracking/ and below."""
