"""The digits program with a range int8 cannot meet: probabilities within 1e-3 of onnxruntime.

    kiln optimize examples/digits/program_strict.py
"""

from program import Digits

from kiln import metrics


class DigitsStrict(Digits):
    name = "digits-strict"
    metrics = [*Digits.metrics, metrics.max_abs_diff(at_most=1e-3)]
