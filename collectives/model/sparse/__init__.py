"""The pieces of the spot-protocol timing; :mod:`nicemu.collectives.model.sparse_timing` joins them.

* :mod:`.maxplus`: the max-plus scans a FIFO resource's completion times come from;
* :mod:`.state`: the cost parameters and every resource's free time between rounds;
* :mod:`.records`: a chunk of a round's slots and what each Rx record costs;
* :mod:`.fault_delays`: ``--faults``: the retransmission delay of each Rx record;
* :mod:`.upstream`: phase 1, the records travel up into the Rx spots;
* :mod:`.aggregation`: the records are reduced into the Tx spot (NIC, host or dedicated CPU);
* :mod:`.downstream`: phase 2, the results scatter back and the Tx spots are freed;
* :mod:`.scalar`: both phases record by record in Python floats, for few nodes (exact, and faster there).
* :mod:`.messages`: asked for, every message that crosses a link, for the shared-fabric replay
  (:mod:`nicemu.collectives.model.sparse_flows`).
"""
