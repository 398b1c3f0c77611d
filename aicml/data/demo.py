"""A deterministic customer-churn dataset with real signal, missing values, and a corrupted batch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

CONTRACTS = ["month-to-month", "one-year", "two-year"]
PAYMENTS = ["electronic-check", "mailed-check", "bank-transfer", "credit-card"]
INTERNET = ["dsl", "fiber", "none"]
REGIONS = ["north", "south", "east", "west", "central"]
NOTE_WORDS = ["billing", "slow", "outage", "happy", "upgrade", "refund", "support", "price", "move", "router"]


def generate_churn(rows: int = 50_000, seed: int = 7) -> pd.DataFrame:
    """Customers with numeric, categorical, date-like and text columns; label ``churn`` is yes/no."""
    rng = np.random.default_rng(seed)
    contract = rng.choice(CONTRACTS, size=rows, p=[0.55, 0.25, 0.20])
    internet = rng.choice(INTERNET, size=rows, p=[0.35, 0.45, 0.20])
    payment = rng.choice(PAYMENTS, size=rows, p=[0.35, 0.2, 0.22, 0.23]).astype(object)
    tenure = np.clip(rng.gamma(2.0, 14.0, size=rows).round(), 0, 72).astype(int)
    base_charge = np.select([internet == "fiber", internet == "dsl"], [80.0, 55.0], 25.0)
    monthly = np.round(base_charge + rng.normal(0, 12, size=rows), 2).clip(18, 120)
    total = np.round(monthly * np.maximum(tenure, 1) * rng.uniform(0.95, 1.05, size=rows), 2)
    calls = rng.poisson(1.2 + (internet == "fiber") * 0.8, size=rows)
    age = rng.integers(18, 85, size=rows).astype(float)
    signup = pd.Timestamp("2026-10-01") - pd.to_timedelta(
        tenure * 30 + rng.integers(0, 30, size=rows), unit="D"
    )
    logit = (
        -1.2
        + 1.4 * (contract == "month-to-month")
        - 0.9 * (contract == "two-year")
        + 0.7 * (payment == "electronic-check")
        + 0.6 * (internet == "fiber")
        - 0.045 * tenure
        + 0.018 * (monthly - 60)
        + 0.35 * calls
        - 0.01 * (age - 45)
    )
    churn = rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))
    notes = [
        " ".join(rng.choice(NOTE_WORDS, size=rng.integers(1, 5))) if rng.random() < 0.6 else ""
        for _ in range(rows)
    ]
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{seed:02d}{i:07d}" for i in range(rows)],
            "signup_date": signup.strftime("%Y-%m-%d"),
            "region": rng.choice(REGIONS, size=rows),
            "age": age,
            "contract": contract,
            "internet_service": internet,
            "payment_method": payment,
            "tenure_months": tenure,
            "monthly_charges": monthly,
            "total_charges": total,
            "support_calls": calls,
            "notes": notes,
            "churn": np.where(churn, "yes", "no"),
        }
    )
    # Realistic gaps: a few unknown ages, payment methods and totals.
    for column, share in (("age", 0.03), ("payment_method", 0.02), ("total_charges", 0.01)):
        frame.loc[rng.random(rows) < share, column] = np.nan
    return frame


def corrupt_batch(clean: pd.DataFrame, seed: int = 13) -> pd.DataFrame:
    """A batch that must not pass the gate: wrong types, out-of-range values, unknown categories,
    and many missing labels."""
    rng = np.random.default_rng(seed)
    bad = clean.copy()
    rows = len(bad)
    bad["tenure_months"] = bad["tenure_months"].astype(object)
    bad.loc[rng.random(rows) < 0.05, "tenure_months"] = "unknown"
    bad.loc[rng.random(rows) < 0.04, "monthly_charges"] = -999.0
    bad["contract"] = bad["contract"].astype(object)
    bad.loc[rng.random(rows) < 0.05, "contract"] = "lifetime"
    bad.loc[rng.random(rows) < 0.35, "churn"] = np.nan
    return bad


@dataclass(frozen=True)
class DemoFiles:
    """Where the demo data went."""

    clean_glob: str
    corrupted: str
    sqlite_url: str  # the SQL URL of the table (SQLite unless a server was given)
    table: str
    rows: int


def write_demo_data(
    directory: Path, rows: int = 50_000, parts: int = 4, seed: int = 7, sql_url: str | None = None
) -> DemoFiles:
    """Write the clean data as ``parts`` CSV files, a corrupted CSV batch, and a table ``churn``.

    The table goes to ``sql_url`` (the stack's PostgreSQL, say), or to a SQLite file beside the CSVs.
    """
    import sqlalchemy as sa

    directory.mkdir(parents=True, exist_ok=True)
    frame = generate_churn(rows, seed)
    for index, chunk in enumerate(np.array_split(np.arange(rows), parts)):
        frame.iloc[chunk].to_csv(directory / f"churn-part-{index:03d}.csv", index=False)
    corrupted = directory / "churn-corrupted.csv"
    corrupt_batch(generate_churn(max(rows // 10, 500), seed + 1)).to_csv(corrupted, index=False)
    url = sql_url or f"sqlite:///{directory / 'churn.db'}"
    engine = sa.create_engine(url)
    try:
        frame.to_sql("churn", engine, if_exists="replace", index=False, chunksize=10_000)
    finally:
        engine.dispose()
    return DemoFiles(
        clean_glob=str(directory / "churn-part-*.csv"),
        corrupted=str(corrupted),
        sqlite_url=url,
        table="churn",
        rows=rows,
    )
