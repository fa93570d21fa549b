"""A 4-layer transformer encoder with random weights (generate it with make_model.py).

Calibrated on synthetic inputs; outputs must keep their direction (cosine) after int8.
"""

import kiln
from kiln import metrics


class Encoder(kiln.ModelProgram):
    name = "encoder"
    synthetic_samples = 8
    calibrate_on_synthetic = True
    metrics = [metrics.cosine(at_least=0.99)]
