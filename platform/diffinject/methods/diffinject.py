"""DiffInject's stage 4: cross-entropy on the original training set plus the synthetic
bias-conflict samples of stages 1-3, labelled with their content image's label
(injection.label_from=content, the paper) or their original image's (original: the released
code on the 32x32 datasets); see inject.synthetic."""
from __future__ import annotations

from diffinject.methods.vanilla import Vanilla


class DiffInject(Vanilla):
    name = "diffinject"
    needs_synthetic = True  # the drivers make the synthetic set and add it to the training data
    synthesis = "h_space_injection"
