"""ResNet-18 with random weights (generate it with make_model.py): synthetic inputs, agreement metrics."""

import kiln
from kiln import metrics


class ResNet18(kiln.ModelProgram):
    name = "resnet18"
    shapes = {"input": [1, 3, 224, 224]}
    synthetic_samples = 4
    metrics = [metrics.agreement(at_least=1.0), metrics.max_rel_diff(at_most=1e-3)]
