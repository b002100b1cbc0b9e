"""The end-to-end demo: a year of New York flights through the whole loop (``modelmill demo``)."""

from __future__ import annotations

from modelmill.demo.flights import MONTH_COLUMNS, DemoOptions, DemoResult, FlightsDemo, MonthRow, month_table
from modelmill.demo.setup import prepare_project

__all__ = ["MONTH_COLUMNS", "DemoOptions", "DemoResult", "FlightsDemo", "MonthRow", "month_table",
           "prepare_project"]
