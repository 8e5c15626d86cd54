"""The plan as a table, JSON and CSV, and the cost chart as a PNG."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from matplotlib.image import imread

from launcher.sizing.capacity import CapacityPlan, CapacityRequest, UsageProfile, plan_capacity
from launcher.sizing.capacity.capacity_report import (
    CSV_COLUMNS,
    render_csv,
    render_json,
    render_table,
)
from launcher.sizing.capacity.cost_chart import (
    FIGURE_INCHES,
    cost_curves,
    dau_grid,
    draw_cost_chart,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def plan() -> CapacityPlan:
    usage = UsageProfile(daily_users=1_000)
    return plan_capacity(CapacityRequest(usage=usage, serverless="cost-guide"))


def test_table_lists_every_option_serverless_and_the_recommendation(plan: CapacityPlan) -> None:
    text = render_table(plan)
    for option in plan.options:
        assert any(line.startswith(option.label + " ") for line in text.splitlines())
    assert "serverless (cost-guide " in text
    assert f"recommendation: {plan.recommendation.choice} -- " in text
    assert "$150/month" in text  # serverless at 1,000 DAU
    assert "crossover: " in text


def test_table_marks_options_that_cannot_serve() -> None:
    request = CapacityRequest(usage=UsageProfile(daily_users=1_000), model="70b", quant="fp8")
    text = render_table(plan_capacity(request))
    assert "does-not-fit" in text
    assert "rtx4090: weights" in text  # the fit solver's reason, on its own line


def test_json_round_trips(plan: CapacityPlan) -> None:
    again = CapacityPlan.model_validate_json(render_json(plan))
    assert again == plan


def test_csv_has_one_row_per_option_and_serverless(plan: CapacityPlan) -> None:
    rows = list(csv.DictReader(io.StringIO(render_csv(plan))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["option"] for r in rows] == [o.label for o in plan.options] + ["serverless"]
    by_label = {r["option"]: r for r in rows}
    assert float(by_label["rtx4090"]["monthly_usd"]) == pytest.approx(280.8)
    assert float(by_label["serverless"]["monthly_usd"]) == pytest.approx(150.0)


def test_cost_curves_are_staircases_and_a_line(plan: CapacityPlan) -> None:
    grid = dau_grid(plan.usage.daily_users)
    curves = cost_curves(plan, grid)
    serving = {o.label for o in plan.options if o.users_per_replica > 0}
    assert "rtx4090" in serving and set(curves) == serving | {"serverless"}
    rtx = curves["rtx4090"]
    assert rtx == sorted(rtx) and rtx[0] == pytest.approx(280.8) and rtx[-1] > 10 * rtx[0]
    serverless = curves["serverless"]
    assert serverless[-1] / serverless[0] == pytest.approx(grid[-1] / grid[0])


def test_chart_is_a_png_of_the_expected_size(plan: CapacityPlan, tmp_path: Path) -> None:
    path = draw_cost_chart(plan, tmp_path / "out" / "cost.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    height, width, _channels = imread(path).shape
    assert (width, height) == (int(FIGURE_INCHES[0] * 100), int(FIGURE_INCHES[1] * 100))
