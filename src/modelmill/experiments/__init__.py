"""A/B tests: sticky assignment, metrics from logs, sound statistics and a decision with its reason.

    >>> from modelmill.experiments import Sample, ztest
    >>> r = ztest(Sample.from_counts("A", 380, 10_000), Sample.from_counts("B", 450, 10_000))
    >>> r.p_value < 0.05
    True
"""

from __future__ import annotations

from modelmill.experiments.analysis import (
    Analysis,
    Decision,
    analyze_frame,
    analyze_samples,
    compare,
    decide,
    planned_sample_size,
)
from modelmill.experiments.assignment import Assigner
from modelmill.experiments.experiment import Arm, Experiment, Experiments, parse_arms
from modelmill.experiments.metrics import (
    DIRECTIONS,
    SERVED_METRICS,
    direction_of,
    is_binary,
    mean,
    proportion,
    ratio,
    summarize,
)
from modelmill.experiments.stats import (
    CORRECTIONS,
    Comparison,
    Cuped,
    Sample,
    adjust_p_values,
    always_valid_p,
    benjamini_hochberg,
    cuped,
    holm,
    power_means,
    power_proportions,
    prob_beat_control,
    proportion_confint,
    sample_size_means,
    sample_size_proportions,
    sequential_test,
    srm_test,
    welch_ttest,
    ztest,
    ztest_means,
)

__all__ = [
    "CORRECTIONS",
    "DIRECTIONS",
    "SERVED_METRICS",
    "Analysis",
    "Arm",
    "Assigner",
    "Comparison",
    "Cuped",
    "Decision",
    "Experiment",
    "Experiments",
    "Sample",
    "adjust_p_values",
    "always_valid_p",
    "analyze_frame",
    "analyze_samples",
    "benjamini_hochberg",
    "compare",
    "cuped",
    "decide",
    "direction_of",
    "holm",
    "is_binary",
    "mean",
    "parse_arms",
    "planned_sample_size",
    "power_means",
    "power_proportions",
    "prob_beat_control",
    "proportion",
    "proportion_confint",
    "ratio",
    "sample_size_means",
    "sample_size_proportions",
    "sequential_test",
    "srm_test",
    "summarize",
    "welch_ttest",
    "ztest",
    "ztest_means",
]
