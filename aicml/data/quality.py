"""Quality suites with Great Expectations 1.x: derive a suite from a first batch, store it, enforce it.

The derived suite holds column names, numeric types and ranges, allowed categories, null fractions
and the share of missing labels a batch may have. Only this module imports great_expectations
(and `aicml.compat`, for its one fenced patch of GE's Jinja views).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aicml.compat import share_compiled_templates  # GE's compiled templates shared (a fenced patch)
from aicml.durable import write_durably
from aicml.errors import ConfigurationError, FailedExpectation

NUMERIC_TYPES = [
    "int",
    "float",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "Int64",
    "Float64",
    "bool",
]
MAX_CATEGORIES = 50


@dataclass(frozen=True)
class SuitePolicy:
    """How strict a derived suite is."""

    max_missing_label_fraction: float = 0.1
    range_margin: float = 0.1
    mostly_range: float = 0.99
    mostly_category: float = 0.99
    null_slack: float = 0.05


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result on one batch, flat enough for a table artifact."""

    expectation: str
    column: str | None
    success: bool
    unexpected_count: int
    element_count: int
    detail: str


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of validating a batch; ``failures`` lists what broke."""

    suite_name: str
    rows: int
    outcomes: list[ExpectationOutcome]
    suite_created: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)

    @property
    def failures(self) -> list[FailedExpectation]:
        return [
            FailedExpectation(o.expectation, o.column, o.unexpected_count, o.detail)
            for o in self.outcomes
            if not o.success
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite_name": self.suite_name,
            "rows": self.rows,
            "success": self.success,
            "suite_created": self.suite_created,
            "outcomes": [asdict(o) for o in self.outcomes],
            **self.extra,
        }


def _is_numeric_like(series: pd.Series) -> bool:
    return bool(pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series))


def as_validation_frame(frame: pd.DataFrame, numeric_columns: Sequence[str]) -> pd.DataFrame:
    """Turn text that parses as a number into a number in columns the suite calls numeric.

    What does not parse stays text, so a type expectation counts exactly the rows that are wrong
    instead of failing a whole column read as text because of one bad value.
    """
    out = frame.copy()
    for column in numeric_columns:
        if column not in out.columns or _is_numeric_like(out[column]):
            continue
        raw = out[column].astype(object)
        parsed = pd.to_numeric(raw, errors="coerce")
        out[column] = raw.where(parsed.isna() | raw.isna(), parsed).astype(object)
        out.loc[raw.isna(), column] = np.nan
    return out


def coerce_to_suite(frame: pd.DataFrame, numeric_columns: Sequence[str]) -> pd.DataFrame:
    """Numeric columns that arrived as text become float64; numeric ones keep their dtype.

    Integer columns stay integer so a model signature accepts the integers clients send.
    """
    out = frame.copy()
    for column in numeric_columns:
        if column in out.columns and not _is_numeric_like(out[column]):
            out[column] = pd.to_numeric(out[column], errors="coerce").astype("float64")
    return out


def numeric_columns_of(suite: dict[str, Any]) -> list[str]:
    return list(suite.get("meta", {}).get("aicml", {}).get("numeric_columns", []))


def derive_suite(
    frame: pd.DataFrame, name: str, target: str, policy: SuitePolicy | None = None
) -> dict[str, Any]:
    """A suite (GE JSON) describing ``frame``: what a later batch of the same dataset must look like."""
    policy = policy or SuitePolicy()
    expectations: list[dict[str, Any]] = [
        {
            "type": "expect_table_columns_to_match_set",
            "kwargs": {"column_set": [str(c) for c in frame.columns], "exact_match": True},
        },
    ]
    numeric: list[str] = []
    for column in frame.columns:
        series = frame[column]
        col = str(column)
        null_fraction = float(series.isna().mean())
        if col == target:
            expectations.append(
                {
                    "type": "expect_column_values_to_not_be_null",
                    "kwargs": {"column": col, "mostly": round(1.0 - policy.max_missing_label_fraction, 6)},
                    "meta": {"aicml_role": "missing_labels"},
                }
            )
        elif null_fraction < 1.0:
            mostly = max(0.0, 1.0 - min(1.0, null_fraction * 2 + policy.null_slack))
            expectations.append(
                {
                    "type": "expect_column_values_to_not_be_null",
                    "kwargs": {"column": col, "mostly": round(mostly, 6)},
                }
            )
        values = series.dropna()
        if values.empty:
            continue
        if _is_numeric_like(series) and not pd.api.types.is_bool_dtype(series):
            numeric.append(col)
            expectations.append(
                {
                    "type": "expect_column_values_to_be_in_type_list",
                    "kwargs": {"column": col, "type_list": NUMERIC_TYPES},
                }
            )
            finite = values[np.isfinite(values.astype("float64"))]
            if finite.empty:
                continue
            lo, hi = float(finite.min()), float(finite.max())
            span = (hi - lo) or max(abs(hi), 1.0)
            low = lo - policy.range_margin * span
            if lo >= 0:
                low = max(low, 0.0)
            expectations.append(
                {
                    "type": "expect_column_values_to_be_between",
                    "kwargs": {
                        "column": col,
                        "min_value": low,
                        "max_value": hi + policy.range_margin * span,
                        "mostly": policy.mostly_range if col != target else 1.0,
                    },
                }
            )
        else:
            distinct = values.astype(str).unique()
            if len(distinct) <= MAX_CATEGORIES and len(distinct) < max(2, len(values) // 2):
                expectations.append(
                    {
                        "type": "expect_column_values_to_be_in_set",
                        "kwargs": {
                            "column": col,
                            "value_set": sorted(map(str, distinct)),
                            "mostly": policy.mostly_category if col != target else 1.0,
                        },
                    }
                )
    return {
        "name": name,
        "expectations": expectations,
        "meta": {"aicml": {"target": target, "numeric_columns": numeric, "derived": True}},
    }


def load_suite(path: Path) -> dict[str, Any]:
    try:
        suite = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigurationError(f"Suite file {str(path)!r} does not exist.") from exc
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"Suite file {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(suite, dict) or "expectations" not in suite:
        raise ConfigurationError(f"Suite file {str(path)!r} has no 'expectations' list.")
    suite.setdefault("name", Path(path).stem)
    return suite


def save_suite(suite: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, json.dumps(suite, indent=2, sort_keys=True).encode())


def _detail(result: dict[str, Any]) -> str:
    sample = result.get("partial_unexpected_list") or []
    if sample:
        shown = ", ".join(repr(v) for v in sample[:3])
        return f"e.g. {shown}"
    observed = result.get("observed_value")
    if observed is not None:
        return f"observed {observed!r}"[:200]
    return ""


def _run_gx(frame: pd.DataFrame, name: str, expectations: list[dict[str, Any]]) -> list[Any]:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if not expectations:
        return []
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("aicml").add_dataframe_asset("batch")
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(
        batch_parameters={"dataframe": frame}
    )
    suite = gx.ExpectationSuite(name=name, expectations=expectations)
    return list(batch.validate(suite, result_format="SUMMARY").results)


def validate_frame(frame: pd.DataFrame, suite: dict[str, Any]) -> ValidationReport:
    """Run ``suite`` on ``frame`` with Great Expectations; never raises for a failing batch.

    Type expectations see numeric columns with unparseable text kept as text (so they count the bad
    rows); range expectations see the same columns as numbers (text there becomes null and is left
    to the type expectation).
    """
    numeric = numeric_columns_of(suite)
    ranged = [
        e
        for e in suite["expectations"]
        if e["type"] == "expect_column_values_to_be_between" and e["kwargs"].get("column") in numeric
    ]
    others = [e for e in suite["expectations"] if e not in ranged]
    results = _run_gx(as_validation_frame(frame, numeric), suite["name"], others)
    results += _run_gx(coerce_to_suite(frame, numeric), suite["name"], ranged)
    outcomes = []
    for item in results:
        config = item.expectation_config
        kwargs = config.kwargs
        res = dict(item.result or {})
        unexpected = res.get("unexpected_count")
        if unexpected is None:
            unexpected = 0 if item.success else len(frame)
        outcomes.append(
            ExpectationOutcome(
                expectation=config.type,
                column=kwargs.get("column"),
                success=bool(item.success),
                unexpected_count=int(unexpected),
                element_count=int(res.get("element_count") or len(frame)),
                detail="" if item.success else _detail(res),
            )
        )
    return ValidationReport(suite_name=suite["name"], rows=len(frame), outcomes=outcomes)


def split_missing_labels(frame: pd.DataFrame, target: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows with a label, rows without one): the second are set aside, never trained on."""
    missing = frame[target].isna()
    if frame[target].dtype == object or pd.api.types.is_string_dtype(frame[target]):
        missing |= frame[target].astype(str).str.strip().isin(["", "nan", "None"])
    return frame.loc[~missing].reset_index(drop=True), frame.loc[missing].reset_index(drop=True)


def build_data_docs(frame: pd.DataFrame, suite: dict[str, Any], site_dir: Path, run_name: str) -> Path:
    """Validate ``frame`` with Great Expectations and render its Data Docs site under ``site_dir``
    (``gx/uncommitted/data_docs/local_site``, where a file context puts it); returns its index.html.

    The engine judges partitions with the compiled suite; this is GE's own rendering of the same
    suite on the batch (or a sample of it), so the docs are GE's word, not a re-implementation.
    The context is ephemeral (its suite, definitions and results in memory, the site alone on
    disk): a file context writes and reads back its YAML and JSON configuration for every object
    it is given, half of a build's time, for a project nobody opens again.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    share_compiled_templates()
    site = site_dir / "gx" / "uncommitted" / "data_docs" / "local_site"
    site.mkdir(parents=True, exist_ok=True)
    # GE's custom styles template, where a file context scaffolds it: the pages include it as before.
    plugins = site_dir / "gx" / "plugins"
    styles = plugins / "custom_data_docs" / "styles"
    styles.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(
        Path(gx.__file__).parent / "render/view/static/styles/data_docs_custom_styles_template.css",
        styles / "data_docs_custom_styles.css",
    )
    config = DataContextConfig(
        plugins_directory=str(plugins),
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={
            "local_site": {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": True,  # as a file context's default site
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(site)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        },
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    definition = (
        context.data_sources.add_pandas("aicml")
        .add_dataframe_asset("batch")
        .add_batch_definition_whole_dataframe("whole")
    )
    gx_suite = context.suites.add(
        gx.ExpectationSuite(name=str(suite["name"]), expectations=list(suite["expectations"]))
    )
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite['name']}-validation", data=definition, suite=gx_suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{suite['name']}-checkpoint",
            validation_definitions=[validation],
            actions=[UpdateDataDocsAction(name="data-docs")],
            result_format="SUMMARY",
        )
    )
    validation_frame = as_validation_frame(frame, numeric_columns_of(suite))
    checkpoint.run(batch_parameters={"dataframe": validation_frame}, run_id=RunIdentifier(run_name=run_name))
    index = site / "index.html"
    if not index.is_file():
        raise ConfigurationError(f"Great Expectations built no local Data Docs site under {str(site_dir)!r}.")
    return index
