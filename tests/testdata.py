"""Small datasets for tests, generated here (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def housing_csv(path: Path, rows: int = 600, seed: int = 3, missing_labels: int = 12) -> Path:
    """Not the demo data: mixed types, missing values, string labels, text and date-like columns."""
    rng = np.random.default_rng(seed)
    area = rng.uniform(30, 250, rows).round(1)
    rooms = np.clip((area / 30 + rng.normal(0, 1, rows)).round(), 1, 9).astype(int)
    city = rng.choice(["Lyon", "Porto", "Graz", "Turku"], rows)
    built = pd.to_datetime("1950-01-01") + pd.to_timedelta(rng.integers(0, 26_000, rows), unit="D")
    premium = (city == "Graz").astype(float) * 40
    value = area * 2 + premium + rng.normal(0, 25, rows)
    band = np.where(value < 200, "low", np.where(value < 380, "mid", "high")).astype(object)
    frame = pd.DataFrame(
        {
            "listing": [f"L-{i:05d}" for i in range(rows)],
            "city": city,
            "built": built.strftime("%d/%m/%Y"),
            "area_m2": area,
            "rooms": rooms,
            "balcony": rng.choice(["yes", "no", None], rows, p=[0.4, 0.5, 0.1]),
            "description": [
                " ".join(rng.choice(["bright", "quiet", "renovated", "garden", "central", "old"], 3))
                for _ in range(rows)
            ],
            "price_band": band,
        }
    )
    frame.loc[rng.choice(rows, 25, replace=False), "area_m2"] = np.nan
    frame.loc[rng.choice(rows, missing_labels, replace=False), "price_band"] = None
    frame.to_csv(path, index=False)
    return path


def regression_csv(path: Path, rows: int = 500, seed: int = 5) -> Path:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows), rng.uniform(0, 10, rows)
    kind = rng.choice(["a", "b", "c"], rows)
    y = 3 * x1 + 0.5 * x2 + (kind == "b") * 2 + rng.normal(0, 0.3, rows)
    pd.DataFrame({"x1": x1, "x2": x2, "kind": kind, "y": y.round(3)}).to_csv(path, index=False)
    return path
