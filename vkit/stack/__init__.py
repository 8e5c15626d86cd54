"""The whole local stack behind ``vkit up``: vLLM replicas, NGINX, Redis, the gateway.

- :mod:`vkit.stack.up_settings` -- ``UpSettings`` (the edge: flags and ``VKIT_UP_*``)
- :mod:`vkit.stack.stack_plan` -- pure ``plan_stack``: settings -> process specs
- :mod:`vkit.stack.stack_groups` -- pure ``plan_groups_stack``: a deployment file's groups ->
  process specs (``vkit up --deployment``)
- :mod:`vkit.stack.specs` -- plain data: what each process runs, and when it is ready
- :mod:`vkit.stack.processes` -- ``ProcessGroup``: start, bounded readiness, stop all
- :mod:`vkit.stack.ready_checks` -- a process's readiness checks, each one bounded call
- :mod:`vkit.stack.restarts` -- a replica that exits is started again, with backoff
- :mod:`vkit.stack.proctree` -- process trees from ``/proc`` (Linux; elsewhere empty)
- :mod:`vkit.stack.ports`, :mod:`vkit.stack.preflight` -- checks before starting
- :mod:`vkit.stack.banner` -- what is printed once the stack is ready
- :mod:`vkit.stack.demo_key` -- the demo key it prints, made with the gateway's key-file code
- :mod:`vkit.stack.schedule_follower` -- the replicas a schedule asks for this hour, and
  compose's ``vllm-N`` services started and stopped to match (``vkit schedule follow``)
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
