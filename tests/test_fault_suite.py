"""The end-to-end fault suite (bench/fault_suite.py): its pure parts, its partition proxy, and a
short run of the whole system — a private Mosquitto, influxd and PostgreSQL, the gateway as a
real ``cacao-dryer gateway run`` process and four ``cacao-dryer node run`` processes — through
a gateway SIGKILL, a broker restart, a node SIGKILL, InfluxDB stopped and a garbage-publishing
client: not one reading lost or stored twice, and each fault raised its alarm.

The long run (50 nodes, 30 minutes, every fault kind) is documented in docs/faults.md and its
latest results are in bench/FAULT_RESULTS.md.
"""

from __future__ import annotations

import random
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.postgres import PostgresServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import itertools

from fault_suite import (
    DURATIONS_LONG,
    DURATIONS_SHORT,
    JUMPS_H,
    LONG_RUN_S,
    NODE_FAULTS,
    SETTLE_SHORT_S,
    FaultKind,
    FaultSuite,
    contiguous_top,
    fault_schedule,
    garbage_messages,
    node_id,
    parse_metrics,
    partition_style,
    report_markdown,
)
from partition_proxy import ProxyHub

from cacao_dryer.errors import PayloadError, TopicError
from gateway.ingest import decode_payload, storable_reading

NODES = [node_id(i) for i in range(1, 11)]


# --- the schedule (pure) ------------------------------------------------------------------------

def test_the_schedule_is_a_function_of_seed_duration_and_nodes():
    assert fault_schedule(7, 1800, NODES) == fault_schedule(7, 1800, NODES)
    assert fault_schedule(7, 1800, NODES) != fault_schedule(8, 1800, NODES)


def test_a_long_schedule_has_every_fault_with_long_outages_one_after_the_other():
    schedule = fault_schedule(1, 30 * 60, NODES)
    assert {fault.kind for fault in schedule} == set(FaultKind)
    for fault in schedule:
        low, high = DURATIONS_LONG[fault.kind]
        assert low <= fault.duration_s <= high
    for before, after in itertools.pairwise(schedule):
        assert after.at_s >= before.at_s + before.duration_s  # never two at once
    last = schedule[-1]
    assert last.at_s + last.duration_s <= 30 * 60


def test_a_short_schedule_uses_short_outages_and_only_the_kinds_asked():
    kinds = [FaultKind.GATEWAY_KILL, FaultKind.GARBAGE]
    schedule = fault_schedule(3, 60, NODES[:3], kinds)
    assert schedule and {fault.kind for fault in schedule} <= set(kinds)
    assert all(DURATIONS_SHORT[f.kind][0] <= f.duration_s <= DURATIONS_SHORT[f.kind][1]
               for f in schedule)
    assert all(f.at_s + f.duration_s + SETTLE_SHORT_S <= 60 for f in schedule)
    assert LONG_RUN_S > 60


def test_node_faults_hit_existing_nodes_never_the_same_twice_in_a_row():
    schedule = fault_schedule(5, 3600, NODES[:4])
    targets = [fault.target for fault in schedule if fault.kind in NODE_FAULTS]
    assert len(targets) > 4 and set(targets) <= set(NODES[:4])
    assert all(a != b for a, b in itertools.pairwise(targets))
    system = {fault.kind: fault.target for fault in schedule if fault.kind not in NODE_FAULTS}
    assert system == {FaultKind.BROKER_RESTART: "broker", FaultKind.INFLUXDB_DOWN: "influxdb",
                      FaultKind.GATEWAY_KILL: "gateway"}
    jumps = [f.jump_h for f in schedule if f.kind is FaultKind.CLOCK_JUMP]
    assert len(jumps) >= 2 and {abs(jump) for jump in jumps} <= set(JUMPS_H)
    assert all(a * b < 0 for a, b in itertools.pairwise(jumps))  # forward and back in turn


@pytest.mark.parametrize(("seed", "duration", "nodes", "error"), [
    (1, 0, NODES, "duration_s"), (1, -5, NODES, "duration_s"), (1, 60, [], "node")])
def test_a_schedule_refuses_nonsense(seed, duration, nodes, error):
    with pytest.raises(ValueError, match=error):
        fault_schedule(seed, duration, nodes)


def test_a_partition_is_silent_when_long_enough_to_be_noticed_else_a_reset():
    assert partition_style(240) == "blackhole"
    assert partition_style(10) == "cut"


def test_every_garbage_message_is_refused_by_the_gateway():
    for name, payload in garbage_messages("secador-01", "secador-02", random.Random(1)):
        with pytest.raises((PayloadError, TopicError)):
            _site, _node, decoded = decode_payload(name, payload)
            storable_reading(name, decoded)  # type: ignore[arg-type]


def test_metrics_and_stored_ranges_are_read_as_the_suite_needs():
    text = ('cacao_gateway_invalid_messages_total{reason="exceeds"} 2.0\n'
            'cacao_gateway_invalid_messages_total{reason="not valid JSON"} 3.0\n'
            'cacao_node_up{node="secador-01",site="coop"} 0.0\n'
            'cacao_gateway_spooled_total 12.0\n# HELP x y\n')
    metrics = parse_metrics(text)
    assert metrics["invalid"] == 5 and metrics["spooled"] == 12
    assert metrics["node_up"] == {"secador-01": 0.0}
    assert contiguous_top((10, 10, 1, 10)) == 10
    assert contiguous_top((9, 9, 1, 10)) == 0     # a gap somewhere
    assert contiguous_top((12, 10, 1, 10)) == 10  # duplicates do not hide the top
    assert contiguous_top(None) == 0


# --- the partition proxy ------------------------------------------------------------------------

class EchoServer:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(connection,), daemon=True).start()

    @staticmethod
    def _echo(connection: socket.socket) -> None:
        with connection:
            while data := connection.recv(4096):
                connection.sendall(data)


@pytest.fixture
def hub() -> Iterator[tuple[ProxyHub, int]]:
    echo = EchoServer()
    proxies = ProxyHub()
    port = proxies.add("secador-01", "127.0.0.1", echo.port)
    yield proxies, port
    proxies.close()
    echo.sock.close()


def connect(port: int) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    client.settimeout(5)
    return client


def test_the_proxy_forwards_and_a_cut_resets_and_refuses_until_healed(hub):
    proxies, port = hub
    client = connect(port)
    client.sendall(b"hola")
    assert client.recv(10) == b"hola"
    proxies.partition("secador-01", "cut")
    with pytest.raises(OSError):  # reset by the proxy (or closed: an empty read)
        client.sendall(b"x")
        if not client.recv(10):
            raise ConnectionResetError
    refused = connect(port)
    assert refused.recv(10) == b""  # accepted and dropped at once: no route
    proxies.heal("secador-01")
    again = connect(port)
    again.sendall(b"de nuevo")
    assert again.recv(20) == b"de nuevo"
    assert proxies.counts("secador-01")[1] == 1


def test_a_blackhole_holds_bytes_and_delivers_them_when_healed(hub):
    proxies, port = hub
    client = connect(port)
    client.sendall(b"uno")
    assert client.recv(10) == b"uno"
    proxies.partition("secador-01", "blackhole")
    client.sendall(b"dos")
    client.settimeout(0.5)
    with pytest.raises(TimeoutError):
        client.recv(10)  # nothing passes: the link is silent
    proxies.heal("secador-01")
    client.settimeout(5)
    received = b""
    while received != b"dos":
        received += client.recv(10)
    assert not proxies.partitioned("secador-01")


# --- the short run -------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.timeout(600)
def test_short_fault_run_loses_nothing_and_every_fault_raises_its_alarm(
        tmp_path, postgres_server: PostgresServer):
    names = [node_id(i) for i in range(1, 5)]
    kinds = [FaultKind.GATEWAY_KILL, FaultKind.BROKER_RESTART, FaultKind.NODE_KILL,
             FaultKind.INFLUXDB_DOWN, FaultKind.GARBAGE]
    schedule = fault_schedule(11, 75, names, kinds)
    assert {fault.kind for fault in schedule} == set(kinds)
    lines: list[str] = []
    suite = FaultSuite(tmp_path, len(names), schedule, reading_every_s=1, seed=11,
                       metadata_url=postgres_server.create_database(), warmup_s=5,
                       recover_timeout_s=120, say=lines.append)
    report = suite.run()
    print(report_markdown(report, "tests/test_fault_suite.py"))
    assert report.taken > 4 * 50
    assert (report.lost, report.duplicated, report.unexpected) == (0, 0, 0)
    assert all(node.stored == node.distinct == node.taken for node in report.node_results)
    assert not report.unrecovered, [f.fault.describe() for f in report.unrecovered]
    for result in report.faults:
        signals = " ".join(result.signals)
        if result.fault.kind is FaultKind.GATEWAY_KILL:
            assert "/api/health did not answer" in signals
        elif result.fault.kind is FaultKind.NODE_KILL:
            assert "node offline" in signals
        elif result.fault.kind is FaultKind.INFLUXDB_DOWN:
            assert "spooled" in signals
        elif result.fault.kind is FaultKind.GARBAGE:
            assert "counted invalid" in signals and not result.missed
    bursts = sum(fault.kind is FaultKind.GARBAGE for fault in schedule)
    assert report.garbage_sent > 0
    # each burst's 2 MiB message never reaches the gateway (its 1 MiB packet limit)
    assert report.invalid_counted == report.garbage_sent - bursts
