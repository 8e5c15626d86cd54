"""A replica schedule as KEDA cron triggers: a kustomize patch for the ``vllm`` ScaledObject.

KEDA's cron scaler (https://keda.sh/docs/2.17/scalers/cron/) asks for ``desiredReplicas``
between a ``start`` and an ``end`` cron expression (minute hour day-of-month month
day-of-week) read in an IANA ``timezone``; outside every window the object falls back to
``minReplicaCount``, and where several triggers are active KEDA takes the largest. So the
floors become one trigger per run of equal hours above the week's lowest floor, and the lowest
floor becomes ``minReplicaCount``; the queue triggers of the overlay stay, and still add
replicas above the floor when the traffic does.

    >>> patch = keda_schedule_patch(schedule)     # office hours at 2, nights 1, weekends 0
    >>> patch[2]["value"]["metadata"]
    {'timezone': 'UTC', 'start': '0 9 * * 1,2,3,4,5', 'end': '0 17 * * 1,2,3,4,5', \
'desiredReplicas': '2'}

A floor of zero needs an overlay that can wake from zero (``--scale-to-zero``: the gateway's
held requests are a trigger); the week's lowest floor is what the patch sets as the minimum.
"""

from __future__ import annotations

from typing import Any

from launcher.sizing.capacity.schedule import ReplicaSchedule


def cron_days(days: list[int]) -> str:
    """Monday-first day numbers -> cron's day-of-week list (0 = Sunday): [0, 4] -> '1,5'."""
    return ",".join(str((day + 1) % 7) for day in days)


def cron_triggers(schedule: ReplicaSchedule) -> list[dict[str, Any]]:
    """One cron trigger per run of days with the same hours above the week's lowest floor."""
    lowest = min(schedule.floors)
    groups: dict[tuple[int, int, int], list[int]] = {}
    for run in schedule.runs():
        if run.replicas > lowest:
            groups.setdefault((run.start, run.end, run.replicas), []).append(run.day)
    triggers: list[dict[str, Any]] = []
    for (start, end, replicas), days in sorted(groups.items(), key=lambda g: (g[1][0], g[0])):
        end_days = [(day + 1) % 7 for day in days] if end == 24 else days
        triggers.append(
            {
                "type": "cron",
                "name": f"schedule-{len(triggers)}",
                "metadata": {
                    "timezone": schedule.timezone,
                    "start": f"0 {start} * * {cron_days(days)}",
                    "end": f"0 {end % 24} * * {cron_days(sorted(end_days))}",
                    "desiredReplicas": str(replicas),
                },
            }
        )
    return triggers


def keda_schedule_patch(schedule: ReplicaSchedule) -> list[dict[str, Any]]:
    """JSON 6902 operations for the overlay's ScaledObject: the week's lowest floor as its
    minimum, then the cron triggers appended to its own."""
    operations: list[dict[str, Any]] = [
        {"op": "replace", "path": "/spec/minReplicaCount", "value": min(schedule.floors)}
    ]
    operations += [
        {"op": "add", "path": "/spec/triggers/-", "value": trigger}
        for trigger in cron_triggers(schedule)
    ]
    return operations


def keda_schedule_kustomization(overlay: str, patch_file: str) -> dict[str, Any]:
    """A kustomization that builds ``overlay`` with the schedule's patch on its ScaledObject."""
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [overlay],
        "patches": [
            {
                "path": patch_file,
                "target": {"group": "keda.sh", "kind": "ScaledObject", "name": "vllm"},
            }
        ],
    }
