"""``vkit capacity``: from daily users to GPUs, dollars per month and per user, and a chart.

usage.py              the traffic model (DAU -> peak concurrency, busy seconds)
throughput.py         users one replica sustains at a per-user speed (the step model);
                      users_per_gpu(gpu, model, quant) for renderers
costs.py              $/hr x 720, the guide's serverless $/GPU-second, priced GPU options
options.py            the request, and one configuration (GPU, quant, TP) costed for it
search.py             every quantization x TP of each GPU: the cheapest wins, the rest say why
guide_rows.py         the guide's throughput rows and the configuration each must mean
serverless.py         serverless priced per GPU class: the worker a model needs, its seconds
                      per request, idle tail and cold starts (configs/serverless.yaml)
recommend.py          serverless or which fleet, and the crossover between them
schedule.py           the replica floor for each hour of the week (peak window, weekends)
                      and the month it saves against the peak's fleet always on
capacity_plan.py      plan_capacity(): all of the above in one CapacityPlan
capacity_report.py    the plan as a table, JSON or CSV
cost_chart.py         monthly cost against DAU, as a PNG
measured.py           a running deployment's window against the guide's rules; forecast
prometheus_window.py  that window, read from its Prometheus
"""

from launcher.sizing.capacity.capacity_plan import CapacityPlan, plan_capacity
from launcher.sizing.capacity.costs import PricedGpu, default_priced_gpus, parse_priced_gpu
from launcher.sizing.capacity.options import CapacityRequest
from launcher.sizing.capacity.throughput import (
    DecodeCalibration,
    GpuThroughput,
    gpu_throughput,
    users_per_gpu,
)
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
    "users_per_gpu",
]
