"""Write digits.npz from scikit-learn's bundled handwritten digits (8x8, values 0..16).

The npz is committed (it is small); this script documents where it came from and rebuilds it:
    python examples/digits/make_dataset.py   (needs scikit-learn)
"""

from pathlib import Path

import numpy as np


def main() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    n_train = 1400
    out = Path(__file__).with_name("digits.npz")
    np.savez_compressed(out, x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])
    print(f"wrote {out} ({n_train} train, {len(x) - n_train} test samples)")


if __name__ == "__main__":
    main()
