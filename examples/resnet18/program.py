"""ResNet-18 with random weights (generate it with make_model.py): synthetic inputs, agreement metrics.

Calibrated on synthetic inputs (there is no real data for random weights), so int8 candidates run; the
ranges are what an int8 model may change: the predicted class and the direction of the logits.
"""

import kiln
from kiln import metrics


class ResNet18(kiln.ModelProgram):
    name = "resnet18"
    shapes = {"input": [1, 3, 224, 224]}
    synthetic_samples = 16
    calibrate_on_synthetic = True
    metrics = [metrics.agreement(at_least=0.9), metrics.cosine(at_least=0.99)]
