"""``vkit capacity``: from daily users to GPUs, dollars per month and per user, and a chart.

usage.py       the traffic model (DAU -> peak concurrency, busy seconds)
throughput.py  users one GPU sustains at a per-user speed (calibrated decode roofline)
costs.py       $/hr x 720, serverless $/GPU-second, priced GPU options
options.py     the request, and one option (GPU or serverless) costed for it
recommend.py   serverless or which fleet, and the crossover between them
plan.py        plan_capacity(): all of the above in one CapacityPlan
report.py      the plan as a table, JSON or CSV
plot.py        monthly cost against DAU, as a PNG
"""

from launcher.sizing.capacity.capacity_plan import CapacityPlan, plan_capacity
from launcher.sizing.capacity.costs import PricedGpu, default_priced_gpus, parse_priced_gpu
from launcher.sizing.capacity.options import CapacityRequest
from launcher.sizing.capacity.throughput import DecodeCalibration, GpuThroughput, gpu_throughput
from launcher.sizing.capacity.usage import UsageProfile, peak_concurrency

__all__ = [
    "CapacityPlan",
    "CapacityRequest",
    "DecodeCalibration",
    "GpuThroughput",
    "PricedGpu",
    "UsageProfile",
    "default_priced_gpus",
    "gpu_throughput",
    "parse_priced_gpu",
    "peak_concurrency",
    "plan_capacity",
]
