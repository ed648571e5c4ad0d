"""Option values that configs and the code acting on them share, kept here so that both can
name them without one importing the other."""

# Speed levers (diffinject.core.accel): each one's first value is the eager float32 reference path.
COMPILE_MODES = ("none", "inductor", "cudagraphs")   # torch.compile off | inductor | inductor + CUDA graphs (GPU)
PRECISIONS = ("auto", "fp32", "bf16_autocast", "bf16_weights")
ATTENTION = ("sdpa", "classic")                      # diffusers' AttnProcessor2_0 | AttnProcessor
NOISE = ("host", "counter")

# The reported accuracy under each model selection (diffinject.training.loop): the valid split's
# best weights, the test split's best (what the reference repositories report), the last weights.
SELECTIONS = {"selected": "reported_acc", "best_test": "reported_acc_best_test", "last": "reported_acc_last"}
