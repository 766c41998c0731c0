"""Gateways on one prefix know which of them are alive from their leases on the broker, and
agree on the owner of every device (gateway/membership.py; docs/design.md, "Several
gateways").

The first tests fold leases by hand; the rest run real gateways on a real Mosquitto with a 2 s
keepalive: in-process ones whose membership the test reads directly, and one as a process of
its own, which the test freezes (SIGSTOP, as a lost network does), kills (SIGKILL) and starts
again.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from edgetwin.agent.config import ConfigError
from edgetwin.agent.contract import ContractError, GatewayLease, Presence, Topics
from edgetwin.gateway.config import GatewayConfig, default_gateway_id, load_gateway_config
from edgetwin.gateway.membership import Membership, MembershipChange, rendezvous_owner
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture, publish
from edgetwin.testing.gateway import RunningGateway
from edgetwin.testing.waiting import poll

TOPICS = Topics()
KEEPALIVE = 2  # seconds; the broker gives up on a silent connection after 1.5 times this
DEVICES = [f"dev-{i:04d}" for i in range(1000)]
S1, S2, S3 = "1" * 16, "2" * 16, "3" * 16


def lease(
    gateway: str = "gw-a",
    state: Presence = Presence.ONLINE,
    session: str = S1,
    since: float = 100.0,
    reason: str = "birth",
) -> bytes:
    return GatewayLease(
        gateway=gateway,
        state=state,
        session=session,
        since=since,
        ts=since + 1,
        version="test",
        reason=reason,  # type: ignore[arg-type]
    ).encode()


def will(gateway: str = "gw-a", session: str = S1, since: float = 100.0) -> bytes:
    return lease(gateway, Presence.OFFLINE, session, since, "connection_lost")


# -- the owner function ---------------------------------------------------------------------


def test_rendezvous_spreads_devices_evenly_and_a_leaver_moves_only_its_own() -> None:
    three = ["gw-a", "gw-b", "gw-c"]
    before = {d: rendezvous_owner(d, three) for d in DEVICES}
    # The order the gateways are listed in does not matter: every gateway computes the same.
    assert before == {d: rendezvous_owner(d, list(reversed(three))) for d in DEVICES}
    for gateway in three:
        assert 0.25 < sum(o == gateway for o in before.values()) / len(DEVICES) < 0.42
    after = {d: rendezvous_owner(d, ["gw-a", "gw-b"]) for d in DEVICES}
    moved = {d for d in DEVICES if before[d] != after[d]}
    assert moved == {d for d in DEVICES if before[d] == "gw-c"}
    # A fourth that joins takes about a quarter, from each of the others.
    four = {d: rendezvous_owner(d, [*three, "gw-d"]) for d in DEVICES}
    taken = [d for d in DEVICES if four[d] != before[d]]
    assert all(four[d] == "gw-d" for d in taken)
    assert 0.18 < len(taken) / len(DEVICES) < 0.32
    assert {before[d] for d in taken} == set(three)
    assert rendezvous_owner("dev-0001", []) is None


# -- folding leases -------------------------------------------------------------------------


def test_a_late_will_of_an_earlier_life_does_not_remove_the_new_one() -> None:
    view = Membership("gw-x", S3)
    assert view.apply("gw-a", lease(session=S1, since=100), heard=1.0) == "applied"
    assert view.live_ids() == ("gw-a",)
    # The replica restarts: a new session, a later start.
    assert view.apply("gw-a", lease(session=S2, since=200), heard=2.0) == "applied"
    # The first life's will, published late (a broker cluster, a will delay), live or
    # replayed: the second life stays.
    assert view.apply("gw-a", will(session=S1, since=100), heard=3.0) == "stale"
    assert view.apply("gw-a", will(session=S1, since=100), heard=None) == "stale"
    assert view.apply("gw-a", lease(session=S1, since=100), heard=None) == "stale"
    assert [(m.id, m.session, m.since) for m in view.members()] == [("gw-a", S2, 200)]
    # Its own will removes it; its reconnection (the same session) brings it back.
    assert view.apply("gw-a", will(session=S2, since=200), heard=4.0) == "applied"
    assert view.live_ids() == ()
    assert view.apply("gw-a", lease(session=S2, since=200), heard=5.0) == "applied"
    assert view.live_ids() == ("gw-a",)


def test_a_replaced_session_stays_stale_and_a_live_birth_wins_over_a_skewed_clock() -> None:
    view = Membership("gw-x", S3)
    view.apply("gw-a", lease(session=S1, since=300), heard=1.0)
    # Rescheduled on a host whose clock is behind: its birth, heard live, is a new life all
    # the same (only a living gateway publishes a birth live).
    assert view.apply("gw-a", lease(session=S2, since=200), heard=2.0) == "applied"
    assert view.members()[0].session == S2
    # The first session is over for good, whatever its `since` says.
    assert view.apply("gw-a", will(session=S1, since=300), heard=3.0) == "stale"
    assert view.apply("gw-a", lease(session=S1, since=300), heard=4.0) == "stale"
    assert view.live_ids() == ("gw-a",)


def test_a_cleared_lease_removes_the_gateway() -> None:
    view = Membership("gw-x", S3)
    view.apply("gw-a", lease(), heard=1.0)
    view.apply("gw-b", lease("gw-b", session=S2), heard=1.0)
    assert view.apply("gw-a", b"", heard=2.0) == "cleared"
    assert view.live_ids() == ("gw-b",)
    assert view.apply("gw-a", b"", heard=2.0) == "unchanged"
    assert view.owner("dev-1") == "gw-b"


def test_confirm_takes_retained_only_members_for_gone_until_heard_live() -> None:
    view = Membership("gw-x", S3)
    view.apply("gw-a", lease(), heard=None)  # replayed by the broker: a claim
    view.apply("gw-b", lease("gw-b", session=S2), heard=None)
    view.apply("gw-b", lease("gw-b", session=S2), heard=5.0)  # answered the rebirth request
    assert view.live_ids() == ("gw-a", "gw-b")
    assert view.confirm(connected=4.0) == ["gw-a"]
    assert view.live_ids() == ("gw-b",)
    # Replayed again at a resubscription: still no proof.
    assert view.apply("gw-a", lease(), heard=None) == "unchanged"
    assert view.live_ids() == ("gw-b",)
    assert view.apply("gw-a", lease(), heard=6.0) == "applied"
    assert view.live_ids() == ("gw-a", "gw-b")


def test_listeners_hear_who_joined_and_who_left() -> None:
    view = Membership("gw-x", S3)
    changes: list[MembershipChange] = []
    view.subscribe(changes.append)
    view.apply("gw-a", lease(), heard=1.0)
    view.apply("gw-b", lease("gw-b", session=S2), heard=1.0)
    view.apply("gw-a", lease(), heard=2.0)  # the same again: no change
    view.apply("gw-a", will(), heard=3.0)
    assert [(set(c.joined), set(c.left), c.live) for c in changes] == [
        ({"gw-a"}, set(), ("gw-a",)),
        ({"gw-b"}, set(), ("gw-a", "gw-b")),
        (set(), {"gw-a"}, ("gw-b",)),
    ]


def test_malformed_and_misplaced_leases_are_refused() -> None:
    view = Membership("gw-x", S3)
    with pytest.raises(ContractError):
        view.apply("gw-a", b'{"v": 1, "gateway": "gw-a"}', heard=1.0)
    with pytest.raises(ContractError, match="on the topic of"):
        view.apply("gw-b", lease("gw-a"), heard=1.0)
    assert view.live_ids() == ()
    assert TOPICS.parse(TOPICS.gateway("status")).kind == "gateway"
    with pytest.raises(ContractError):
        TOPICS.parse("edgetwin/_gateways/Not-An-Id")


def test_the_gateway_id_comes_from_the_host_name_unless_set(tmp_path: Path) -> None:
    default = GatewayConfig.from_builtins({}).gateway
    assert default.gateway_id("Gateway-0.gateway.ns.svc.cluster.local") == "gateway-0"
    assert default.gateway_id("edge box (2)") == "edge-box--2-"
    assert default.gateway_id("__") == "gateway"
    assert default.gateway_id("x" * 80) == "x" * 64
    assert default_gateway_id("pi") == "pi"
    file = tmp_path / "gateway.toml"
    file.write_text('[gateway]\nid = "gw-file"\n', encoding="utf-8")
    assert load_gateway_config(file, environ={}).gateway.gateway_id() == "gw-file"
    environ = {"EDGETWIN_GATEWAY_ID": "gw-env"}
    assert load_gateway_config(file, environ=environ).gateway.gateway_id() == "gw-env"
    file.write_text('[gateway]\nid = "Not/An-Id"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"gateway\.id"):
        load_gateway_config(file, environ={})


# -- real gateways on a real broker ---------------------------------------------------------


def _config(gateway_id: str) -> dict[str, Any]:
    return {"gateway": {"id": gateway_id}, "mqtt": {"keepalive": KEEPALIVE}}


def _listed(gateway: RunningGateway) -> dict[str, str]:
    """The gateways `gateway` sees live, and their sessions, from its API."""
    answer = gateway.client.request("GET", "/gateways").json()
    return {g["id"]: g["session"] for g in answer["gateways"]}


def _membership(gateway: RunningGateway) -> Membership:
    assert gateway.app is not None
    membership: Membership = gateway.app.state.service.membership
    return membership


def _sees(gateway: RunningGateway, expected: set[str], timeout: float = 10) -> None:
    poll(
        lambda: set(_listed(gateway)) == expected,
        timeout,
        what=f"{gateway.config.gateway.id} seeing {sorted(expected)}",
    )


def test_gateways_see_each_other_come_and_go_and_agree_on_owners(broker: Broker) -> None:
    endpoint = broker.endpoint
    everyone = {"gw-a", "gw-b", "gw-c"}
    with (
        RunningGateway(endpoint, config=_config("gw-a")) as a,
        RunningGateway(endpoint, config=_config("gw-b")) as b,
        Capture(endpoint, TOPICS.all_gateways()) as leases,
    ):
        c = RunningGateway(endpoint, config=_config("gw-c"), mode="process").start()
        try:
            for gateway in (a, b, c):
                _sees(gateway, everyone)
            answer = c.client.request("GET", "/gateways").json()
            assert answer["this"] == "gw-c"
            assert [g["id"] for g in answer["gateways"] if g["this"]] == ["gw-c"]
            first_life = {g["id"]: g for g in answer["gateways"]}["gw-c"]
            assert a.client.health().json()["gateways_live"] == 3
            assert "edgetwin_gateways_live 3.0" in a.client.request("GET", "/metrics").body.decode()

            # Every gateway computes the same owners from the same view.
            owners = {d: _membership(a).owner(d) for d in DEVICES}
            assert owners == {d: _membership(b).owner(d) for d in DEVICES}
            assert owners == {d: rendezvous_owner(d, _listed(c)) for d in DEVICES}
            c_owned = {d for d, owner in owners.items() if owner == "gw-c"}
            assert 0.25 < len(c_owned) / len(DEVICES) < 0.42

            # Frozen, as behind a lost network: the broker hears nothing and gives up on the
            # connection after 1.5 x keepalive, then publishes its will.
            leases.clear()
            c.send_signal(signal.SIGSTOP)
            frozen = time.monotonic()
            try:
                (gone,) = leases.wait_for(
                    TOPICS.gateway("gw-c"), lambda m: b'"offline"' in m.payload, timeout=15
                )
                _sees(a, {"gw-a", "gw-b"}, timeout=1)
                _sees(b, {"gw-a", "gw-b"}, timeout=1)
            finally:
                c.send_signal(signal.SIGCONT)
            after_will = gone.received_at - frozen
            print(f"will of a frozen gateway after {after_will:.2f} s (keepalive {KEEPALIVE} s)")
            # Mosquitto 2.0 looks for expired keepalives every 5 s (keepalive.c), in whole
            # seconds, from the last packet it heard (up to a keepalive before the freeze):
            # measured 1.8-7.7 s here.
            assert after_will <= 1.5 * KEEPALIVE + 5 + 1
            # Woken, it reconnects in the same life and is live again.
            _sees(a, everyone)
            assert _listed(a)["gw-c"] == first_life["session"]

            # Killed: the kernel closes its socket, and the broker publishes the will at once.
            killed = time.monotonic()
            c.kill()
            poll(
                lambda: (
                    _membership(a).live_ids() == ("gw-a", "gw-b")
                    and _membership(b).live_ids() == ("gw-a", "gw-b")
                ),
                1.5 * KEEPALIVE,
                interval=0.02,
                what="gw-c gone for gw-a and gw-b",
            )
            print(f"a killed gateway gone for the others after {time.monotonic() - killed:.2f} s")
            after = {d: _membership(a).owner(d) for d in DEVICES}
            assert after == {d: _membership(b).owner(d) for d in DEVICES}
            moved = {d for d in DEVICES if after[d] != owners[d]}
            assert moved == c_owned  # only the devices it owned, about a third
            print(f"devices moved when one of three left: {len(moved) / len(DEVICES):.3f}")
        finally:
            c.stop()

        # Back, in a new life of the same id.
        c = RunningGateway(endpoint, config=_config("gw-c"), mode="process").start()
        try:
            for gateway in (a, b):
                _sees(gateway, everyone)
            second_session = _listed(a)["gw-c"]
            assert second_session != first_life["session"]
            assert {d: _membership(a).owner(d) for d in DEVICES} == owners

            # The first life's will, published late (as a broker cluster or a will delay can)
            # and retained over the new life's lease: no gateway drops the new life.
            late = GatewayLease(
                gateway="gw-c",
                state=Presence.OFFLINE,
                session=first_life["session"],
                since=first_life["since"],
                ts=first_life["since"],
                version=first_life["version"],
                reason="connection_lost",
            )
            publish(endpoint, TOPICS.gateway("gw-c"), late.encode(), retain=True)
            # One client's messages arrive in order: once a marker published after the will
            # is seen, the will has been folded in.
            marker = lease("gw-marker", since=time.time())
            publish(endpoint, TOPICS.gateway("gw-marker"), marker, retain=True)
            for gateway in (a, b):
                _sees(gateway, {*everyone, "gw-marker"})
                assert _listed(gateway)["gw-c"] == second_session
            publish(endpoint, TOPICS.gateway("gw-marker"), b"", retain=True)
            _sees(a, everyone)

            # A gateway that starts now reads the late will from the broker, and hears the new
            # life answer its rebirth request.
            with RunningGateway(endpoint, config=_config("gw-d")) as d:
                _sees(d, {*everyone, "gw-d"})
                assert _listed(d)["gw-c"] == second_session
        finally:
            c.stop()

        # A clean stop publishes the offline lease itself.
        leases.clear()
        b.stop()
        (stopped,) = leases.wait_for(TOPICS.gateway("gw-b"), timeout=5)
        document = GatewayLease.decode(stopped.payload)
        assert (document.state, document.reason) == (Presence.OFFLINE, "shutdown")
        _sees(a, {"gw-a"}, timeout=2)


@pytest.mark.edgetwin_broker(persistence=True)
def test_a_gateway_lost_with_the_broker_is_taken_for_gone(broker: Broker) -> None:
    """A broker that crashes loses its clients' wills, and with persistence replays the online
    lease of a gateway that died meanwhile: the gateways that come back ask for rebirths and
    take the silent one for gone."""
    endpoint = broker.endpoint
    with RunningGateway(endpoint, config=_config("gw-a")) as a:
        c = RunningGateway(endpoint, config=_config("gw-c"), mode="process").start()
        try:
            _sees(a, {"gw-a", "gw-c"})
            broker.kill()
            c.kill()
        finally:
            c.stop()
        broker.start()
        with Capture(endpoint, TOPICS.gateway("gw-c")) as replayed:
            (message,) = replayed.wait_for(TOPICS.gateway("gw-c"), timeout=5)
            assert message.retain
            assert GatewayLease.decode(message.payload).state is Presence.ONLINE  # the premise
        poll(
            lambda: a.client.health().status == 200,
            10,
            what="gw-a connected again",
        )
        _sees(a, {"gw-a"}, timeout=5)
