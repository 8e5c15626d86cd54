"""Monthly cost against daily users: one line per GPU option, one for serverless.

Both axes are logarithmic. A dedicated fleet's cost is a staircase (one more GPU each time the
peak outgrows it); serverless is a straight line. The chart marks the crossover (where
self-managed starts to win) and the user's own DAU. Drawn with matplotlib's object API on
the Agg canvas: no pyplot state, no display needed.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from launcher.sizing.capacity.capacity_plan import CapacityPlan
from launcher.sizing.capacity.costs import gpus_needed, monthly_cost
from launcher.sizing.capacity.serverless import serverless_monthly_usd
from launcher.sizing.capacity.usage import peak_concurrency

FIGURE_INCHES = (9.0, 5.5)
DPI = 100
_LABEL_BOX = {"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 1.5}


def dau_grid(users: int, points: int = 300) -> list[float]:
    """Geometric DAU values from 10 to well past ``users`` (at least 1,000,000)."""
    low, high = 10.0, max(1e6, users * 10.0)
    step = (high / low) ** (1 / (points - 1))
    return [low * step**i for i in range(points)]


def cost_curves(plan: CapacityPlan, grid: list[float]) -> dict[str, list[float]]:
    """Monthly $ at each DAU in ``grid``, per serving option and for ``serverless``."""
    one_user = plan.usage.model_copy(update={"daily_users": 1})
    peak_per_user = peak_concurrency(one_user)
    curves: dict[str, list[float]] = {}
    for option in plan.options:
        if option.users_per_replica <= 0:
            continue
        replica_month = monthly_cost(option.usd_per_hour) * option.tensor_parallel
        curves[option.label] = [
            gpus_needed(users * peak_per_user, option.users_per_replica, plan.spares)
            * replica_month
            for users in grid
        ]
    if plan.serverless.worker is not None:
        curves["serverless"] = [serverless_at(plan, users) for users in grid]
    return curves


def serverless_at(plan: CapacityPlan, users: float) -> float:
    """The serverless month at ``users`` DAU (per user at the nearest whole DAU, times users)."""
    whole = max(1, round(users))
    usage = plan.usage.model_copy(update={"daily_users": whole})
    return (serverless_monthly_usd(plan.serverless, usage) or 0.0) / whole * users


def draw_cost_chart(plan: CapacityPlan, path: Path) -> Path:
    """Write the chart as a PNG to ``path`` and return it."""
    grid = dau_grid(plan.usage.daily_users)
    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, costs in cost_curves(plan, grid).items():
        if label == "serverless":
            axes.plot(grid, costs, label=label, linestyle="--", color="black")
        else:
            axes.plot(grid, costs, label=label, drawstyle="steps-post")
    rec = plan.recommendation
    if rec.crossover_users is not None:
        axes.axvline(rec.crossover_users, color="grey", linestyle=":")
        axes.annotate(
            f"crossover ~{rec.crossover_users:,} DAU",
            (rec.crossover_users, 0.02),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=8,
            color="grey",
            ha="right",
            va="bottom",
            bbox=_LABEL_BOX,
        )
        crossing = serverless_at(plan, rec.crossover_users)
        axes.plot([rec.crossover_users], [crossing], marker="o", color="black")
    axes.axvline(plan.usage.daily_users, color="red", linewidth=1.5)
    axes.annotate(
        f"you: {plan.usage.daily_users:,} DAU -> {rec.choice}",
        (plan.usage.daily_users, 0.98),
        xycoords=("data", "axes fraction"),
        rotation=90,
        fontsize=8,
        color="red",
        ha="right",
        va="top",
        bbox=_LABEL_BOX,
    )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("daily active users")
    axes.set_ylabel("$ per month")
    axes.set_title(
        f"Monthly cost of {plan.model} ({plan.quant}) at >= "
        f"{plan.usage.user_tok_s:g} tok/s per user"
    )
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
