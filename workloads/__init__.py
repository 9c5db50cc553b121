"""LLM-serving traffic on top of the collectives: models, parallelism, arrivals, batching, compute, metrics.

The pieces, in the order a serving run uses them:

- :mod:`nicemu.workloads.models` and :mod:`nicemu.workloads.accelerators`: what runs, on what;
- :mod:`nicemu.workloads.parallelism`: TP, PP, EP and disaggregation, checked against the model and the topology;
- :mod:`nicemu.workloads.requests`: synthetic arrivals or an Azure-format trace;
- :mod:`nicemu.workloads.batching`: continuous batching with chunked prefill;
- :mod:`nicemu.workloads.kv_memory`: the paged KV cache that fits beside the weights, and its blocks;
- :mod:`nicemu.workloads.compute` and :mod:`nicemu.workloads.traffic`: per iteration, the
  roofline compute time and the collectives issued
  (:mod:`nicemu.workloads.embedding_shards` says which embedding blocks are zero);
- :mod:`nicemu.workloads.iteration_time`: both combined, with a caller-supplied collective timer;
- :mod:`nicemu.workloads.metrics`: TTFT, TPOT, end-to-end latency, throughput.
"""

from nicemu.errors import WorkloadError
from nicemu.workloads.accelerators import ACCELERATORS, Accelerator, load_accelerator
from nicemu.workloads.batch import Batch, Decode, PrefillChunk, make_batch
from nicemu.workloads.batching import Batcher, BatchingConfig, BatchingResult, Iteration, run_batching
from nicemu.workloads.compute import IterationCompute, OperatorTime, iteration_compute, iteration_compute_us
from nicemu.workloads.embedding_shards import (
    embedding_block_mask,
    embedding_density,
    embedding_input,
    embedding_row_mask,
    token_ids,
)
from nicemu.workloads.iteration_time import CommCost, IterationCost, IterationTimer
from nicemu.workloads.kv_memory import BlockPool, KvPlan, plan_kv
from nicemu.workloads.metrics import request_rows, summarize
from nicemu.workloads.models import PRESETS, Model, load_model, preset_names
from nicemu.workloads.parallelism import Parallelism
from nicemu.workloads.requests import Request, load_trace, parse_lengths, synthetic_requests
from nicemu.workloads.traffic import TRAFFIC_COLUMNS, TrafficCsv, TrafficRecord, iteration_traffic, write_traffic_csv

__all__ = [
    "ACCELERATORS", "PRESETS", "TRAFFIC_COLUMNS", "Accelerator", "Batch", "BlockPool", "CommCost", "Decode",
    "Iteration", "KvPlan",
    "IterationCompute", "IterationCost", "IterationTimer", "Model", "OperatorTime", "Parallelism", "PrefillChunk",
    "Request", "BatchingResult", "Batcher", "BatchingConfig", "TrafficCsv", "TrafficRecord", "WorkloadError",
    "embedding_block_mask", "embedding_density", "embedding_input", "embedding_row_mask", "iteration_compute",
    "iteration_compute_us", "iteration_traffic", "load_accelerator", "load_model", "load_trace", "make_batch",
    "parse_lengths", "plan_kv", "preset_names", "request_rows", "run_batching", "summarize", "synthetic_requests",
    "token_ids", "write_traffic_csv",
]
