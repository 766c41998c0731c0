"""Replicas that no orchestrator numbers claim their shards through the broker
(`edgetwin simulate --shard auto/N`, gateway/scenario/claims.py).

First the rule on leases folded by hand, and on a model of the broker's delivery order that
plays many interleavings of replicas claiming at once; then `ShardClaim` on a real mosquitto
(racing claims, a broker restart, a replica cut off while another takes its shard); then the
command itself: three replicas started together split the fleet, a fourth is refused, and a
replica killed with SIGKILL frees its shard for the next.
"""

from __future__ import annotations

import contextlib
import random
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgetwin.agent.config import MqttSettings
from edgetwin.agent.contract import ContractError, ShardLease, Telemetry, Topics
from edgetwin.gateway.broker import MosquittoBroker, free_port
from edgetwin.gateway.scenario import default_scenario
from edgetwin.gateway.scenario.claims import (
    ShardBook,
    ShardClaim,
    ShardClaimError,
    check_run_name,
    default_run_name,
)
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture, Message, publish
from edgetwin.testing.process import start_edgetwin, stop_process
from edgetwin.testing.waiting import poll
from tests.fleet_helpers import mqtt_settings

TOPICS = Topics()
RUN = "fleet"
S1, S2, S3 = "1" * 16, "2" * 16, "3" * 16


def lease(
    shard: int, session: str, *, count: int = 3, devices: int = 30, ts: float = 100.0
) -> bytes:
    return ShardLease(
        run=RUN, shard=shard, count=count, devices=devices, session=session, ts=ts, host="h"
    ).encode()


# -- the rule --------------------------------------------------------------------------------


def test_a_claim_holds_its_shard_unless_another_replicas_lease_on_it_came_first() -> None:
    book = ShardBook(RUN, S1)
    book.apply(S1, lease(0, S1))
    assert book.holds(0)
    book.apply(S2, lease(1, S2))  # another shard: no rival
    assert book.holds(0)
    assert book.lowest_free(3) == 0  # this replica's own lease takes nothing from it
    # The broker took S3's claim of 0 first (its clock is ahead: its ts is the later one):
    # it is in this replica's book before this replica's own claim comes back, and wins.
    book.apply(S3, lease(0, S3, ts=999.0))
    assert not book.holds(0)
    assert book.lowest_free(3) == 2
    # Cleared (a release, or a will): shard 0 is free again.
    book.apply(S3, b"")
    assert book.holds(0)
    # A replica that lost shard 1 moves its lease to the next: shard 1 is free.
    book.apply(S2, lease(2, S2))
    assert book.lowest_free(3) == 0
    book.apply(S3, lease(0, S3))
    assert book.lowest_free(3) == 1
    book.clear()
    assert book.others() == []


def test_leases_of_another_fleet_or_split_disagree_and_bad_ones_are_refused() -> None:
    book = ShardBook(RUN, S1)
    book.apply(S2, lease(0, S2))
    book.apply(S3, lease(1, S3, devices=40))
    assert [other.session for other in book.disagreeing(3, 30)] == [S3]
    assert {other.session for other in book.disagreeing(4, 30)} == {S2, S3}
    with pytest.raises(ContractError, match="on the topic of"):
        book.apply(S2, lease(0, S3))
    with pytest.raises(ContractError):
        book.apply(S2, b'{"v": 1, "run": "fleet"}')
    with pytest.raises(ContractError, match="shards count from 0"):
        ShardLease.decode(lease(0, S2).replace(b'"shard":0', b'"shard":3'))
    assert TOPICS.parse(TOPICS.shard_lease("telemetry", S1)).kind == "shard"
    with pytest.raises(ContractError, match="telemetry filter"):
        check_run_name("telemetry")
    with pytest.raises(ContractError, match="run name"):
        check_run_name("Fleet/1")
    assert default_run_name(None) == "default"
    assert default_run_name(Path("/etc/Scale Test.toml")) == "scale-test"


# -- the rule on a model of the broker's order -------------------------------------------------


class ModelBroker:
    """What the rule relies on: the broker takes the clients' packets one at a time, each
    client's in the order it sent them; a subscriber receives the subscription's retained
    messages (in any order) before anything published after it, and then every publish in the
    order the broker took them. An empty retained publish clears the retained message."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.retained: dict[str, bytes] = {}
        self.inboxes: dict[str, deque[tuple[str, bytes, bool]]] = {}

    def subscribe(self, client: str) -> None:
        retained = [(topic, payload, True) for topic, payload in self.retained.items()]
        self.rng.shuffle(retained)
        self.inboxes[client] = deque(retained)

    def publish(self, topic: str, payload: bytes) -> None:
        if payload:
            self.retained[topic] = payload
        else:
            self.retained.pop(topic, None)
        for inbox in self.inboxes.values():
            inbox.append((topic, payload, False))

    def lose(self, client: str, will_topic: str) -> None:
        del self.inboxes[client]
        self.publish(will_topic, b"")


@dataclass
class ModelReplica:
    """`ShardClaim`'s steps, one message at a time: subscribe, say nothing (the barrier), then
    claim the lowest free shard and decide when its own claim comes back."""

    session: str
    count: int
    book: ShardBook = field(init=False)
    outbox: deque[tuple[str, bytes]] = field(default_factory=deque)  # ("subscribe", b"") first
    statement: bytes = b""
    claiming: int | None = None
    shard: int | None = None
    refused: bool = False
    attempts: int = 0

    def __post_init__(self) -> None:
        self.book = ShardBook(RUN, self.session)
        self.outbox.extend([("subscribe", b""), (self.topic, b"")])

    @property
    def topic(self) -> str:
        return TOPICS.shard_lease(RUN, self.session)

    @property
    def done(self) -> bool:
        return self.shard is not None or self.refused

    def receive(self, topic: str, payload: bytes, retain: bool) -> None:
        session = topic.rsplit("/", 1)[1]
        self.book.apply(session, payload)
        if session != self.session or retain or payload != self.statement or self.done:
            return
        if self.claiming is not None and self.book.holds(self.claiming):
            self.shard = self.claiming
            return
        free = self.book.lowest_free(self.count)
        if free is None or self.attempts > 2 * self.count:
            self.refused = True
            self.outbox.append((self.topic, b""))  # ShardClaim's release, as the command exits
            return
        self.attempts += 1
        self.claiming, self.statement = free, lease(free, self.session, count=self.count)
        self.outbox.append((self.topic, self.statement))


def play(seed: int, replicas: int, count: int, kill_one: bool) -> list[ModelReplica]:
    """Replicas start in a random order and their packets and deliveries interleave at
    random. A refused replica exits once the broker has its release, and is started again as
    an orchestrator restarts it (a few times in all: more replicas than shards stay refused).
    With `kill_one`, a replica that holds a shard dies at a random moment, and a new one
    starts."""
    rng = random.Random(seed)
    broker = ModelBroker(rng)
    sessions = iter(f"{n:016x}" for n in range(1, 1000))
    everyone = [ModelReplica(next(sessions), count) for _ in range(replicas)]
    killed: ModelReplica | None = None
    restarts = 3 * replicas
    for _ in range(100_000):
        # The invariant at every step: no shard held twice by live replicas.
        held = [r.shard for r in everyone if r.shard is not None]
        assert len(held) == len(set(held)), f"seed {seed}: a shard held twice: {held}"
        if kill_one and killed is None and held and rng.random() < 0.05:
            killed = rng.choice([r for r in everyone if r.shard is not None])
            broker.lose(killed.session, killed.topic)
            everyone[everyone.index(killed)] = ModelReplica(next(sessions), count)
        moves = [
            (kind, r)
            for r in everyone
            for kind, ready in (
                ("send", bool(r.outbox)),
                ("receive", bool(broker.inboxes.get(r.session))),
            )
            if ready
        ]
        if not moves:
            return everyone
        kind, replica = rng.choice(moves)
        if kind == "receive":
            replica.receive(*broker.inboxes[replica.session].popleft())
            continue
        topic, payload = replica.outbox.popleft()
        if topic == "subscribe":
            broker.subscribe(replica.session)
            continue
        broker.publish(topic, payload)
        if replica.refused and not replica.outbox and restarts:
            restarts -= 1
            del broker.inboxes[replica.session]
            everyone[everyone.index(replica)] = ModelReplica(next(sessions), count)
    raise AssertionError(f"seed {seed}: did not settle")


@pytest.mark.parametrize("replicas", [2, 3, 4, 6])
def test_replicas_claiming_at_once_each_hold_a_shard_of_their_own_in_any_order(
    replicas: int,
) -> None:
    count = 3
    for seed in range(300):
        survivors = play(seed, replicas, count, kill_one=seed % 2 == 1)
        holding = sorted(r.shard for r in survivors if r.shard is not None)
        # Every shard is held once, as long as there are replicas for it; the rest are
        # refused, not left waiting.
        assert holding == list(range(min(count, replicas))), f"seed {seed}: {holding}"
        assert all(r.done for r in survivors), f"seed {seed}"


# -- ShardClaim on a real broker ---------------------------------------------------------------


def retained(broker: Broker, run: str) -> list[Message]:
    """The leases the broker retains for `run` now: a new subscriber's retained messages, all
    in once a marker published after its subscription has come back (the broker queues them
    for it before it grants the subscription)."""
    with Capture(broker, [TOPICS.all_shard_leases(run), "test/marker"]) as fresh:
        publish(broker, "test/marker", b"x")
        fresh.wait_for("test/marker")
        return [m for m in fresh.messages(TOPICS.all_shard_leases(run)) if m.retain]


def settings(broker: Broker, port: int | None = None) -> MqttSettings:
    return mqtt_settings(
        broker,
        **({} if port is None else {"port": port}),
        keepalive=2,
        reconnect_min_delay=0.05,
        reconnect_max_delay=0.3,
    )


@pytest.mark.integration
def test_replicas_racing_for_one_shard_leave_it_to_the_claim_the_broker_took_first(
    broker: Broker,
) -> None:
    claims = [ShardClaim(settings(broker), RUN, 3, 30) for _ in range(3)]
    try:
        for claim in claims:
            claim.connect()
        # All three know the same empty book and claim shard 0 at the same moment.
        start = threading.Barrier(len(claims))
        won: dict[str, bool] = {}

        def race(claim: ShardClaim) -> None:
            start.wait(5)
            won[claim.session] = claim.try_claim(0)

        racers = [threading.Thread(target=race, args=(claim,)) for claim in claims]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(15)
        assert sorted(won.values()) == [False, False, True]
        # The two that lost take the next free shards; the winner keeps its own.
        assert [claim.claim() for claim in claims if won[claim.session]] == [0]
        assert sorted(claim.claim() for claim in claims) == [0, 1, 2]
        with ShardClaim(settings(broker), RUN, 3, 30) as fourth:
            with pytest.raises(ShardClaimError) as refused:
                fourth.claim()
            assert str(refused.value) == (
                f"all 3 shards of run {RUN!r} are claimed: scale to at most 3 replicas"
            )
        with (
            ShardClaim(settings(broker), RUN, 4, 30) as other_split,
            pytest.raises(ShardClaimError, match="disagree: this one splits 30 devices"),
        ):
            other_split.claim()
        # One stops cleanly: its lease is cleared, and its shard is the next replica's.
        leaving = next(claim for claim in claims if claim.shard == 1)
        leaving.release()
        with ShardClaim(settings(broker), RUN, 3, 30) as successor:
            assert successor.claim() == 1
    finally:
        for claim in claims:
            claim.release()


@pytest.mark.integration
def test_replicas_keep_their_shards_through_a_broker_that_lost_every_lease(
    broker: Broker,
) -> None:
    """A broker restarted without persistence forgets the retained leases: each replica
    publishes its own again when it reconnects, and keeps its shard."""
    with (
        ShardClaim(settings(broker), RUN, 2, 20) as first,
        ShardClaim(settings(broker), RUN, 2, 20) as second,
    ):
        assert (first.claim(), second.claim()) == (0, 1)
        broker.restart()

        def leases_again() -> dict[str, int]:
            leases = [ShardLease.decode(m.payload) for m in retained(broker, RUN)]
            return {lease.session: lease.shard for lease in leases}

        poll(
            lambda: leases_again() == {first.session: 0, second.session: 1},
            15,
            0.1,
            what="both leases retained again",
        )
        assert first.lost is None
        assert second.lost is None


@pytest.mark.integration
def test_a_lease_nobody_answers_for_is_cleared_and_its_shard_claimed_again(
    broker: Broker,
) -> None:
    """A lease retained for a session that is gone without its will (planted here as a
    broker that kept its retained messages through a crash would keep it): the roll call gets
    no answer for it, the lease is cleared and the shard claimed. A live replica answers the
    roll call and keeps its shard."""
    publish(broker, TOPICS.shard_lease(RUN, S1), lease(0, S1, count=2, devices=20), retain=True)
    with ShardClaim(settings(broker), RUN, 2, 20, roll_call_wait=0.5) as first:
        assert first.claim() == 1, "the free shard first: no roll call needed"
        assert first.cleared == []
        with ShardClaim(settings(broker), RUN, 2, 20, roll_call_wait=0.5) as second:
            assert second.claim() == 0
            assert second.cleared == [S1]
            sessions = {ShardLease.decode(m.payload).session for m in retained(broker, RUN)}
            assert sessions == {first.session, second.session}
            with (
                ShardClaim(settings(broker), RUN, 2, 20, roll_call_wait=0.5) as third,
                pytest.raises(ShardClaimError, match="all 2 shards"),
            ):
                third.claim()
            assert third.cleared == [], "both live replicas answered the roll call"
            assert (first.lost, second.lost) == (None, None)


@pytest.mark.integration
def test_a_replica_gone_while_a_persistent_broker_was_down_frees_its_shard(
    broker_factory: Callable[..., Broker],
) -> None:
    """The broker crashes with the lease saved, the replica holding the only shard dies while
    it is down, so no will is ever published (a broker that stops cleanly publishes its
    clients' wills first); the broker comes back with the lease. The next replica calls the
    roll, nobody answers, and it holds the shard."""
    broker = broker_factory(persistence=True)
    server = broker.server
    if not isinstance(server, MosquittoBroker):
        pytest.skip("needs the local mosquitto back end's database file")
    gone = ShardClaim(settings(broker), RUN, 1, 10, roll_call_wait=0.5)
    assert gone.claim() == 0
    database = server.persistence_path
    assert database is not None
    poll(
        lambda: database.exists() and gone.session.encode() in database.read_bytes(),
        10,
        what="the lease saved in the broker's database",
    )
    broker.kill()
    gone.release(timeout=0.1)  # no broker to tell: the lease stays in the broker's database
    broker.start()
    assert [ShardLease.decode(m.payload).session for m in retained(broker, RUN)] == [gone.session]
    with ShardClaim(settings(broker), RUN, 1, 10, roll_call_wait=0.5) as next_one:
        assert next_one.claim() == 0
        assert next_one.cleared == [gone.session]


class Cable:
    """A TCP hop to the broker that the test can cut, as a lost network would, and mend:
    `cut()` closes every connection through it and refuses new ones; `mend()` takes them
    again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.mend()

    def mend(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            doomed = [*self._sockets, *([self._listener] if self._listener else [])]
            self._sockets.clear()
            self._listener = None
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.mark.integration
def test_a_replica_cut_off_while_another_claims_its_shard_gives_the_shard_up(
    broker: Broker,
) -> None:
    cable = Cable((broker.host, broker.port))
    lost = threading.Event()
    try:
        with (
            Capture(broker, TOPICS.all_shard_leases(RUN)) as leases,
            ShardClaim(
                settings(broker, cable.port), RUN, 2, 20, on_lost=lambda _reason: lost.set()
            ) as cut_off,
        ):
            assert cut_off.claim() == 0
            mine = TOPICS.shard_lease(RUN, cut_off.session)
            leases.clear()
            cable.cut()
            # The broker lost the connection and published its will: shard 0 is free.
            leases.wait_for(mine, lambda m: not m.payload, timeout=10)
            with ShardClaim(settings(broker), RUN, 2, 20) as newcomer:
                assert newcomer.claim() == 0
                cable.mend()
                # Back, it publishes its lease again and finds the newcomer's first.
                assert lost.wait(15), "the cut-off replica did not give its shard up"
                assert cut_off.lost is not None
                assert "shard 0 of 2 of run 'fleet' was claimed by another replica" in (
                    cut_off.lost
                )
                # It withdrew its lease; the newcomer keeps the shard.
                leases.wait_for(mine, lambda m: not m.payload and not m.retain, count=2)
                assert newcomer.lost is None
                assert newcomer.shard == 0
    finally:
        cable.cut()


# -- the command -------------------------------------------------------------------------------


DEVICES = 12
CLAIMED = re.compile(r"claimed shard (\d+)/3, (\d+) of 12 devices")


def replica(broker: Broker, log: Path) -> subprocess.Popen[bytes]:
    return start_edgetwin(
        [
            "simulate", "--devices", str(DEVICES), "--shard", "auto/3",
            "--broker", f"{broker.host}:{broker.port}", "--workers", "1", "--qos", "0",
            "--quiet",
        ],
        log_file=log.open("wb"),
    )  # fmt: skip


def claimed_shard(log: Path, timeout: float = 30) -> int:
    found: list[int] = []

    def claimed() -> bool:
        match = CLAIMED.search(log.read_text(errors="replace"))
        if match is not None:
            found.append(int(match[1]))
        return match is not None

    poll(claimed, timeout, 0.05, what=f"a claimed shard in {log.name}")
    return found[0]


def devices_seen(capture: Capture) -> set[str]:
    return {Telemetry.decode(m.payload).device for m in capture.messages()}


@pytest.mark.integration
def test_replicas_started_together_split_the_fleet_and_a_killed_ones_shard_is_taken_again(
    broker: Broker, tmp_path: Path
) -> None:
    fleet = set(default_scenario(DEVICES).device_ids())
    processes: dict[int, subprocess.Popen[bytes]] = {}
    with (
        Capture(broker, TOPICS.all_telemetry()) as telemetry,
        Capture(broker, TOPICS.all_shard_leases("default")) as leases,
    ):
        started = {n: replica(broker, tmp_path / f"replica-{n}.log") for n in range(3)}
        try:
            shards = {claimed_shard(tmp_path / f"replica-{n}.log"): n for n in started}
            assert sorted(shards) == [0, 1, 2]
            processes = {shard: started[n] for shard, n in shards.items()}
            poll(lambda: devices_seen(telemetry) >= fleet, 30, 0.1, what="the whole fleet")
            # Exactly the one-process fleet's devices, each from one replica: no reading
            # of any stream twice.
            assert devices_seen(telemetry) == fleet
            readings = [Telemetry.decode(m.payload) for m in telemetry.messages()]
            numbered = [(r.device, r.sensor, r.seq) for r in readings]
            assert len(numbered) == len(set(numbered))

            refused = subprocess.run(
                [
                    sys.executable, "-m", "edgetwin", "simulate", "--devices", str(DEVICES),
                    "--shard", "auto/3", "--broker", f"{broker.host}:{broker.port}",
                ],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert refused.returncode == 1, refused.stderr
            assert refused.stderr.strip() == (
                "edgetwin simulate: all 3 shards of run 'default' are claimed: scale to at "
                "most 3 replicas"
            )

            # Killed: its will frees shard 1, and a new replica takes that same shard.
            latest = {m.topic: m.payload for m in leases.messages()}  # losing claims moved on
            held = {ShardLease.decode(p).shard: topic for topic, p in latest.items() if p}
            leases.clear()
            processes[1].send_signal(signal.SIGKILL)
            processes[1].wait(10)
            leases.wait_for(held[1], lambda m: not m.payload, timeout=10)
            processes[1] = replica(broker, tmp_path / "replacement.log")
            assert claimed_shard(tmp_path / "replacement.log") == 1
            telemetry.clear()
            poll(lambda: devices_seen(telemetry) == fleet, 30, 0.1, what="the fleet again")
        finally:
            for process in [*started.values(), *processes.values()]:
                if process.poll() is None:
                    code, _ = stop_process(process)
                    assert code == 0
    # Stopped cleanly, every replica cleared its lease.
    assert retained(broker, "default") == []


def test_auto_shards_need_real_time_and_a_run_name_that_can_be_a_topic(tmp_path: Path) -> None:
    def simulate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgetwin", "simulate", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    virtual = simulate("--shard", "auto/3", "--virtual", "--out", str(tmp_path / "x.jsonl"))
    assert virtual.returncode == 2
    assert "--shard auto/3: only in real time" in virtual.stderr
    bad_run = simulate("--shard", "auto/3", "--broker", "127.0.0.1:1", "--run", "telemetry")
    assert bad_run.returncode == 2
    assert "--run: run name 'telemetry'" in bad_run.stderr
    told = simulate("--shard", "0/3", "--broker", "127.0.0.1:1", "--run", "fleet")
    assert told.returncode == 2
    assert "--run: only with --shard auto/N" in told.stderr
