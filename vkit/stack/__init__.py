"""The whole local stack behind ``vkit up``: vLLM replicas, NGINX, Redis, the gateway.

- :mod:`vkit.stack.up_settings` -- ``UpSettings`` (the edge: flags and ``VKIT_UP_*``)
- :mod:`vkit.stack.stack_plan` -- pure ``plan_stack``: settings -> process specs
- :mod:`vkit.stack.processes` -- ``ProcessGroup``: start, bounded readiness, stop all
- :mod:`vkit.stack.ports`, :mod:`vkit.stack.preflight` -- checks before starting
- :mod:`vkit.stack.banner` -- what is printed once the stack is ready
- :mod:`vkit.stack.run` -- ``run_stack``, the shell that ties them together
"""

from vkit.stack.processes import ProcessFailed, ProcessGroup
from vkit.stack.specs import HttpCheck, ProcessSpec, TcpCheck, VllmCheck
from vkit.stack.stack_plan import StackLayout, StackPlan, StackPorts, plan_stack
from vkit.stack.up_settings import UpSettings

__all__ = [
    "HttpCheck",
    "ProcessFailed",
    "ProcessGroup",
    "ProcessSpec",
    "StackLayout",
    "StackPlan",
    "StackPorts",
    "TcpCheck",
    "UpSettings",
    "VllmCheck",
    "plan_stack",
]
