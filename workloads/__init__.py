"""LLM-serving traffic on top of the collectives: models, parallelism, arrivals, batching, compute, metrics.

The pieces, in the order a serving run uses them:

- :mod:`workloads.models` and :mod:`workloads.accelerators`: what runs, on what;
- :mod:`workloads.parallelism`: TP, PP, EP and disaggregation, checked against the model and the topology;
- :mod:`workloads.requests`: synthetic arrivals or an Azure-format trace;
- :mod:`workloads.scheduler`: continuous batching with chunked prefill;
- :mod:`workloads.compute` and :mod:`workloads.traffic`: per iteration, the
  roofline compute time and the collectives issued
  (:mod:`workloads.embedding_shards` says which embedding blocks are zero);
- :mod:`workloads.iteration_time`: both combined, with a caller-supplied collective timer;
- :mod:`workloads.metrics`: TTFT, TPOT, end-to-end latency, throughput.
"""

from workloads.accelerators import ACCELERATORS, Accelerator, load_accelerator
from workloads.batch import Batch, Decode, PrefillChunk, make_batch
from workloads.compute import IterationCompute, OperatorTime, iteration_compute, iteration_compute_us
from workloads.embedding_shards import (
    embedding_block_mask,
    embedding_density,
    embedding_input,
    embedding_row_mask,
    token_ids,
)
from workloads.errors import WorkloadError
from workloads.iteration_time import CommCost, IterationCost, IterationTimer
from workloads.metrics import request_rows, summarize
from workloads.models import PRESETS, Model, load_model, preset_names
from workloads.parallelism import Parallelism
from workloads.requests import Request, load_trace, parse_lengths, synthetic_requests
from workloads.scheduler import Iteration, Scheduler, SchedulerConfig, ScheduleResult, run_schedule
from workloads.traffic import TRAFFIC_COLUMNS, TrafficCsv, TrafficRecord, iteration_traffic, write_traffic_csv

__all__ = [
    "ACCELERATORS", "PRESETS", "TRAFFIC_COLUMNS", "Accelerator", "Batch", "CommCost", "Decode", "Iteration",
    "IterationCompute", "IterationCost", "IterationTimer", "Model", "OperatorTime", "Parallelism", "PrefillChunk",
    "Request", "ScheduleResult", "Scheduler", "SchedulerConfig", "TrafficCsv", "TrafficRecord", "WorkloadError",
    "embedding_block_mask", "embedding_density", "embedding_input", "embedding_row_mask", "iteration_compute",
    "iteration_compute_us", "iteration_traffic", "load_accelerator", "load_model", "load_trace", "make_batch",
    "parse_lengths", "preset_names", "request_rows", "run_schedule", "summarize", "synthetic_requests",
    "token_ids", "write_traffic_csv",
]
