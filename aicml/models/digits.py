"""scikit-learn's bundled 8x8 handwritten digits as an image dataset (ships with scikit-learn: no download)."""

from __future__ import annotations

import numpy as np

from aicml.models.trainers import ImageData

PIXEL_SCALE = 16.0  # the digits' pixel values run from 0 to 16


def load_digits_split(
    seed: int, test_size: float = 0.2, val_size: float = 0.15
) -> tuple[ImageData, np.ndarray, np.ndarray]:
    """Stratified train/validation/test split by ``seed``: (training data, raw test images, test labels).

    Raw images are (N, 8, 8) in pixel units, which is what the logged models take.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images, labels = digits.images.astype(np.float32), digits.target.astype(np.int64)
    rest_x, test_x, rest_y, test_y = train_test_split(
        images, labels, test_size=test_size, random_state=seed, stratify=labels
    )
    train_x, val_x, train_y, val_y = train_test_split(
        rest_x, rest_y, test_size=val_size / (1 - test_size), random_state=seed, stratify=rest_y
    )
    classes = sorted(int(c) for c in np.unique(labels))
    data = ImageData(
        x_train=np.ascontiguousarray(train_x[:, None] / PIXEL_SCALE, dtype=np.float32),
        y_train=train_y,
        x_val=np.ascontiguousarray(val_x[:, None] / PIXEL_SCALE, dtype=np.float32),
        y_val=val_y,
        classes=classes,
        seed=seed,
        scale=PIXEL_SCALE,
    )
    return data, test_x, test_y
