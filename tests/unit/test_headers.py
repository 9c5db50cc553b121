"""Packet headers (``link.header_bytes``): every packet carries H more bytes on the wire."""

import numpy as np
import pytest

from nicemu.collectives import model_sparse, model_time, sparse_config
from nicemu.nic.profile import load_profile
from nicemu.nic.streams import framed

IDEAL = load_profile("ideal")
BETA = 1.0 / (IDEAL.link.bandwidth_GBps * 1e3)
GAMMA = 1.0 / (IDEAL.host.reduce_GBps * 1e3)
ALPHA = IDEAL.link.latency_us
P = IDEAL.nic.packet_bytes


def test_framed_bytes_count_one_header_per_packet():
    assert framed(0, 1024, 82) == 0
    assert framed(1, 1024, 82) == 83
    assert framed(1024, 1024, 82) == 1024 + 82
    assert framed(1025, 1024, 82) == 1025 + 164
    assert framed(np.array([0, 4096, 4097]), 4096, 58).tolist() == [0, 4096 + 58, 4097 + 116]


@pytest.mark.parametrize("p", [2, 4, 8])
@pytest.mark.parametrize("packets_per_chunk", [1, 3, 64])
@pytest.mark.parametrize("header", [0, 58, 82])
def test_host_ring_closed_form_with_headers(p, packets_per_chunk, header):
    """Every chunk is a whole number of full packets: each step costs α + c(1 + H/P)β (+ cγ in the
    reduce-scatter), the ring formula with the link's bytes framed."""
    prof = IDEAL.with_overrides([f"link.header_bytes={header}"])
    chunk = packets_per_chunk * P
    n = chunk * p
    t = model_time("allreduce", "ring", f"ring:{p}", prof, n // 4, "float32")
    framed_chunk = chunk * (1 + header / P)
    expected = 2 * (p - 1) * (ALPHA + framed_chunk * BETA) + (p - 1) * chunk * GAMMA
    assert t.emulated_us == pytest.approx(expected, rel=1e-12)
    assert t.wire_bytes == 2 * (p - 1) * p * chunk
    assert t.framed_bytes == 2 * (p - 1) * p * (chunk + packets_per_chunk * header)


def test_recursive_doubling_frames_every_hop():
    """On ring:8 recursive doubling crosses 1 + 2 + 4 links per node: framed bytes count each."""
    prof = IDEAL.with_overrides(["link.header_bytes=82"])
    count = 3000
    t = model_time("allreduce", "recursive-doubling", "ring:8", prof, count, "float32")
    assert t.framed_bytes == 8 * (1 + 2 + 4) * framed(count * 4, P, 82)


@pytest.mark.parametrize("algo", ["omniccl", "omnireduce"])
def test_sparse_messages_pay_headers(algo):
    count, nodes = 1 << 16, 8
    cfg = sparse_config(algo, nodes)
    masks = np.ones((nodes, -(-count // cfg.block_size)), dtype=bool)
    plain = model_sparse(cfg, masks, IDEAL, 4)
    framed_t = model_sparse(cfg, masks, IDEAL.with_overrides(["link.header_bytes=82"]), 4)
    assert framed_t.emulated_us > plain.emulated_us
    assert framed_t.wire_bytes == plain.wire_bytes     # wire_bytes stays payload


def test_header_key_is_optional_and_checked():
    from nicemu.errors import ProfileError
    assert load_profile("ideal").link.header_bytes == 0            # ideal has no header_bytes key
    for name in ("directreduce-paper", "omniccl-paper", "400g-gen5"):  # RoCEv2 framing (docs/model.md §7)
        assert load_profile(name).link.header_bytes == 82
    with pytest.raises(ProfileError, match="header_bytes"):
        load_profile("ideal", ["link.header_bytes=-1"])


def _spot_messages(plan, itemsize: int) -> list[tuple[int, int]]:
    """(bytes, copies) of every message of the spot protocol that crosses a link, walked round by
    round and slot by slot from the plan: records up (not the aggregator's own), results and Rx
    credits down to every far worker, Tx credits back up."""
    from nicemu.collectives.schedules.spot_protocol import CREDIT_BYTES, INDEX_BYTES, RECORD_HEADER_BYTES
    cfg, lay = plan.cfg, plan.layout
    dedicated = cfg.aggregation == "dedicated"
    far = lay.nodes if dedicated else lay.nodes - 1
    per_block = cfg.block_size * itemsize + INDEX_BYTES
    out = []
    for rnd in plan.rounds:
        for j, slot in enumerate(rnd.slots.tolist()):
            agg_node = -1 if dedicated else int(lay.aggregator_node[lay.slot_agg[slot]])
            for w in range(lay.nodes):
                if rnd.reports[j, w] and w != agg_node:
                    out.append((RECORD_HEADER_BYTES + int(rnd.sent[j, w]) * per_block, 1))
            out.append((RECORD_HEADER_BYTES + int(rnd.result[j]) * per_block, far))
            out.append((CREDIT_BYTES, far))                      # Tx credits
            if cfg.credits and rnd.next_lo[j] < lay.slot_hi[slot]:
                out.append((CREDIT_BYTES, far))                  # Rx credits with the next window
    return out


@pytest.mark.parametrize("algo", ["omniccl", "omniccl-cpu", "omnireduce"])
@pytest.mark.parametrize("density", [0.05, 0.4, 1.0])
@pytest.mark.parametrize("chunk", [None, 7])
def test_sparse_framed_bytes_sum_every_message(algo, density, chunk, monkeypatch):
    """framed_bytes of a sparse run is the sum over its plan's messages of bytes + ⌈bytes/P⌉ H;
    with H = 0 it is wire_bytes."""
    from nicemu.collectives.model.sparse import state
    from nicemu.collectives.model.sparse_timing import plan_sparse
    if chunk is not None:                # a few (slot, worker) pairs per chunk: many chunks per round
        monkeypatch.setattr(state, "CHUNK", chunk)
    nodes, header = 5, 82
    prof = load_profile("omniccl-paper", [f"link.header_bytes={header}"])
    cfg = sparse_config(algo, nodes, block_size=256, spot_blocks=8, spots=2)
    rng = np.random.default_rng(11)
    masks = rng.random((nodes, 90)) < density
    masks[:, 40:50] = False                                      # a stretch of blocks zero everywhere
    masks[0, :16] = True                                         # full records of several packets
    msgs = _spot_messages(plan_sparse(cfg, masks), 4)
    pkt = prof.nic.packet_bytes
    assert any(-(-m // pkt) > 1 for m, _ in msgs)                # some messages span several packets
    wire = sum(m * c for m, c in msgs)
    framed_sum = sum((m + -(-m // pkt) * header) * c for m, c in msgs)
    t = model_sparse(cfg, masks, prof, 4)
    assert t.wire_bytes == wire
    assert t.framed_bytes == framed_sum > wire
    plain = model_sparse(cfg, masks, load_profile("omniccl-paper", ["link.header_bytes=0"]), 4)
    assert plain.framed_bytes == plain.wire_bytes == wire
