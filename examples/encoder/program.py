"""A 4-layer transformer encoder with random weights (generate it with make_model.py)."""

import kiln
from kiln import metrics


class Encoder(kiln.ModelProgram):
    name = "encoder"
    synthetic_samples = 4
    metrics = [metrics.cosine(at_least=0.9999), metrics.max_rel_diff(at_most=1e-3)]
