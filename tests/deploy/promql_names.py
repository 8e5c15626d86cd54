"""Which metric names a PromQL expression reads (enough of PromQL for our own queries)."""

from __future__ import annotations

import re

FUNCTIONS = {
    "sum", "avg", "min", "max", "count", "rate", "irate", "increase", "deriv", "delta",
    "histogram_quantile", "avg_over_time", "max_over_time", "min_over_time", "round",
    "vector", "scalar", "abs", "clamp_min", "clamp_max", "absent", "topk", "bottomk",
    "changes", "resets", "absent_over_time",
}  # fmt: skip
KEYWORDS = {"by", "without", "and", "or", "unless", "on", "ignoring", "group_left", "bool"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    """Identifiers that are metric names: not functions, keywords, labels, or durations."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', "", expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    numbers = {n for n in names if re.fullmatch(r"[eE]\d*|Inf|NaN", n)}
    return names - FUNCTIONS - KEYWORDS - numbers


def base_name(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name
