"""A real sentence-embedding transformer (paraphrase-MiniLM-L3-v2) on real sentences: `make demo`.

Acceptable: every sentence's embedding within cosine 0.99 of the fp32 model's, the bound embedding search
users hold int8 models to. `prepare.py` fetches the model and the sentences.
"""

import kiln
from kiln import metrics


class MiniLM(kiln.ModelProgram):
    name = "minilm"
    shapes = {"input_ids": [1, 128], "attention_mask": [1, 128]}
    dataset = kiln.Dataset(path="samples.npz")
    metrics = [metrics.cosine(at_least=0.99, output="461", name="embedding_cosine")]
