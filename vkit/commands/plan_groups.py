"""``vkit plan --deployment FILE``: each group of a deployment file sized and priced.

    vkit plan --deployment deploy/deployments/two-models.yaml [--json]

Each group is fit on its GPUs (:func:`vkit.deployment.group_fit.fit_groups`): its report is
``vkit plan``'s for one replica, headed by the group's served name, replicas, GPUs and
adapters. Groups on the same GPUs are said to share them, with each one's memory share;
groups that cannot share one GPU are the solver's one-line refusal (exit 2). The price is
per GPU of a priced kind, a shared GPU counted once.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from launcher.sizing.fit_report import render_plan_text
from vkit.deployment.deployment_file import load_deployment_file
from vkit.deployment.group_fit import GroupFit, fit_groups

__all__ = ["groups_price_per_hour", "groups_report", "run_plan_groups"]


def groups_price_per_hour(fits: list[GroupFit]) -> float | None:
    """Dollars per hour for every GPU of the deployment (None: no GPU with a price)."""
    prices: dict[str, float] = {}
    for fit in fits:
        if fit.price_per_hour is None:
            continue
        for gpu_set in fit.gpu_sets:
            prices.update({gpu_id: fit.price_per_hour for gpu_id in gpu_set.ids})
    return round(sum(prices.values()), 2) if prices else None


def _head(fit: GroupFit) -> str:
    where = "cores" if fit.cpu else "GPUs"
    sets = ", ".join(gpu_set.name for gpu_set in fit.gpu_sets)
    line = f"== {fit.name}: {len(fit.gpu_sets)} replica(s) of {fit.entry.model} on {where} {sets}"
    adapters = ", ".join(f"{a.name} (rank {a.rank})" for a in fit.entry.adapters)
    if adapters:
        line += f"; adapters {adapters}"
    if fit.shared_with:
        line += (
            f"; shares its GPUs with {', '.join(fit.shared_with)} "
            f"(gpu_memory_utilization {fit.plan.gpu_memory_utilization})"
        )
    return line


def groups_report(fits: list[GroupFit]) -> str:
    """Every group's report, then the deployment's GPU price."""
    blocks = [_head(fit) + "\n" + render_plan_text(fit.plan, None) for fit in fits]
    price = groups_price_per_hour(fits)
    total = (
        f"GPUs: ${price:.2f}/hour (${price * 730:,.0f}/month)"
        if price is not None
        else "GPUs: no price known"
    )
    return "\n\n".join([*blocks, total])


def groups_json(fits: list[GroupFit]) -> dict[str, Any]:
    return {
        "groups": [
            {
                "name": fit.name,
                "model": fit.entry.model,
                "gpu": fit.gpu,
                "gpu_sets": [gpu_set.name for gpu_set in fit.gpu_sets],
                "shared_with": list(fit.shared_with),
                "adapters": [a.model_dump() for a in fit.entry.adapters],
                "plan": fit.plan.model_dump(),
            }
            for fit in fits
        ],
        "price_per_hour": groups_price_per_hour(fits),
    }


def run_plan_groups(args: argparse.Namespace) -> int:
    fits = fit_groups(load_deployment_file(args.deployment))
    if args.json:
        print(json.dumps(groups_json(fits), indent=2))
    else:
        print(groups_report(fits))
    return 0
