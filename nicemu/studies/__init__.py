"""Studies: the sweeps behind docs/results/, importable from Python.

Each module runs one study with the public API (``nicemu.collectives``,
``nicemu.topologies``, ``nicemu.nic.profile``) and writes its result page;
the script of the same name under ``scripts/`` parses the command line and
calls it.

* :mod:`.paper_directreduce`: the DirectReduce paper's configurations, host ring vs DirectReduce;
* :mod:`.paper_omniccl`: the OmNICCL comparison over block density;
* :mod:`.faults_report`: what link faults and stragglers cost each algorithm;
* :mod:`.scale_topology` and :mod:`.scaling_plots`: AllReduce on 6D tori up to 262,144 nodes;
* :mod:`.growth_curve`: the model executor's wall time against nodes x steps;
* :mod:`.sparse_model_bench`: wall time and memory of the sparse model at scale;
* :mod:`.soak` and :mod:`.overhead`: MPI runs (leaks over many calls; wall-time overhead);
* :mod:`.telemetry_cost`: the per-dimension link summary on a 6-D torus and what telemetry costs.
"""
