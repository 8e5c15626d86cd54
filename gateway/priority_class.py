"""Priority classes: a key's class becomes the request's ``priority`` for vLLM's
``--scheduling-policy priority`` (lower is served first: docs/vllm-server.md#priority-scheduling).

    >>> class_value("batch"), class_value("interactive"), class_value(7), class_value(None)
    (100, 0, 7, 0)
    >>> forwarded_priority({"priority": -5}, 100), forwarded_priority({"priority": 200}, 100)
    (100, None)

A key names ``interactive`` (:data:`INTERACTIVE`, vLLM's default 0: a key with no class is
interactive), ``batch`` (:data:`BATCH`) or an integer. A client may ask for a later turn than
its key's class, never an earlier one: a body's own ``priority`` lower than the class (or not
an integer) is replaced by the class. A body naming ``priority`` twice is re-encoded by the
gate (:mod:`gateway.body`'s duplicate-field rule), so the upstream reads the value checked here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import StrictInt

__all__ = ["BATCH", "INTERACTIVE", "PriorityClass", "class_value", "forwarded_priority"]

INTERACTIVE = 0  # vLLM's default priority: requests that name none are interactive
BATCH = 100  # far after interactive, with room for integer classes between them
CLASSES: dict[str, int] = {"interactive": INTERACTIVE, "batch": BATCH}

PriorityClass = Literal["interactive", "batch"] | StrictInt  # a keys file's: 1.5, true, "5": no


def class_value(priority: PriorityClass | None) -> int:
    """vLLM's ``priority`` for a key's class (``None``: interactive)."""
    if priority is None:
        return INTERACTIVE
    if isinstance(priority, str):
        return CLASSES[priority]
    return priority


def forwarded_priority(data: Mapping[str, Any], floor: int) -> int | None:
    """The ``priority`` the body must carry upstream for a key of class value ``floor``, or
    ``None`` when the body may go as it is: its own priority is an integer at or after the
    class, or it names none and the class is vLLM's default."""
    asked = data.get("priority")
    if asked is None:
        return None if floor == INTERACTIVE else floor
    if type(asked) is int and asked >= floor:  # not a bool, a float or a string
        return None
    return floor
