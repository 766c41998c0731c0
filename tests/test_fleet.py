"""Presence bookkeeping: births, last wills, and late wills of dead connections."""

from __future__ import annotations

from agent.contract import Presence, Status
from gateway.config import ManifestDevice
from gateway.fleet import DeviceTwin, Fleet, PresenceState


def status(state: Presence, boot: int, reason: str = "birth", device: str = "pi") -> Status:
    return Status.from_builtins(
        {
            "device": device,
            "state": state,
            "ts": 1.0,
            "boot": boot,
            "agent_version": "1",
            "reason": reason,
        }
    )


def test_birth_then_will_then_new_birth() -> None:
    fleet = Fleet([ManifestDevice(id="pi")])
    changes: list[tuple[str, PresenceState]] = []
    fleet.subscribe(lambda record: changes.append((record.id, record.presence)))
    assert fleet.apply_status(status(Presence.ONLINE, 1)) == "applied"
    assert fleet.apply_status(status(Presence.OFFLINE, 1, "connection_lost")) == "applied"
    assert fleet.apply_status(status(Presence.ONLINE, 2)) == "applied"
    assert changes == [
        ("pi", PresenceState.ONLINE),
        ("pi", PresenceState.OFFLINE),
        ("pi", PresenceState.ONLINE),
    ]


def test_late_will_of_an_older_boot_is_discarded() -> None:
    fleet = Fleet([ManifestDevice(id="pi")])
    fleet.apply_status(status(Presence.ONLINE, 5))
    assert fleet.apply_status(status(Presence.OFFLINE, 4, "connection_lost")) == "stale"
    record = fleet.get("pi")
    assert record is not None
    assert record.presence is PresenceState.ONLINE
    assert record.boot == 5


def test_repeated_birth_is_unchanged_and_silent() -> None:
    fleet = Fleet([ManifestDevice(id="pi")])
    heard: list[DeviceTwin] = []
    fleet.subscribe(heard.append)
    fleet.apply_status(status(Presence.ONLINE, 1))
    assert fleet.apply_status(status(Presence.ONLINE, 1)) == "unchanged"
    assert len(heard) == 1


def test_unknown_device_is_tracked_but_never_simulated() -> None:
    fleet = Fleet([])
    fleet.apply_status(status(Presence.ONLINE, 1, device="stray"))
    stray = fleet.get("stray")
    assert stray is not None
    assert not stray.in_manifest
    assert stray.sensors_to_simulate(grace_over=True) == {}
    fleet.apply_status(status(Presence.OFFLINE, 1, "shutdown", device="stray"))
    assert stray.sensors_to_simulate(grace_over=True) == {}


def test_counts_by_presence_and_server() -> None:
    fleet = Fleet([ManifestDevice(id="a"), ManifestDevice(id="b"), ManifestDevice(id="c")])
    fleet.apply_status(status(Presence.ONLINE, 1, device="a"))
    fleet.apply_status(status(Presence.OFFLINE, 1, "shutdown", device="b"))
    assert fleet.counts() == {
        ("online", "agent"): 1,
        ("offline", "simulation"): 1,
        ("unknown", "simulation"): 1,
    }


def test_an_online_device_not_heard_live_since_a_connection_is_taken_for_gone() -> None:
    fleet = Fleet([ManifestDevice(id="pi"), ManifestDevice(id="ghost")])
    changes: list[tuple[str, PresenceState]] = []
    fleet.subscribe(lambda record: changes.append((record.id, record.presence)))
    fleet.apply_status(status(Presence.ONLINE, 3, device="ghost"))  # replayed: heard=None
    fleet.apply_status(status(Presence.ONLINE, 1), heard=5.0)  # live, before the connection
    connected = 10.0
    fleet.apply_status(status(Presence.ONLINE, 1), heard=10.5)  # its answer to the rebirth
    assert fleet.silent_since(connected) == ["ghost"]
    assert fleet.mark_silent("ghost", connected)
    assert not fleet.mark_silent("pi", connected)
    ghost = fleet.get("ghost")
    assert ghost is not None
    assert (ghost.presence, ghost.last_reason) == (PresenceState.OFFLINE, "silent")
    # It was alive after all (a reading, heard live): online again, for the twin to hand back.
    fleet.heard_live("ghost", 11.0)
    assert ghost.presence is PresenceState.ONLINE
    # A will is not a silence: a device gone by its will stays gone whatever comes late.
    fleet.apply_status(status(Presence.OFFLINE, 3, "connection_lost", device="ghost"), heard=12.0)
    fleet.heard_live("ghost", 13.0)
    assert ghost.presence is PresenceState.OFFLINE
    assert changes == [
        ("ghost", PresenceState.ONLINE),
        ("pi", PresenceState.ONLINE),
        ("ghost", PresenceState.OFFLINE),
        ("ghost", PresenceState.ONLINE),
        ("ghost", PresenceState.OFFLINE),
    ]


def session_status(
    state: Presence, boot: int, session: str, reason: str = "birth", ts: float = 1.0
) -> Status:
    return Status.from_builtins(
        {
            "device": "pi",
            "state": state,
            "ts": ts,
            "boot": boot,
            "agent_version": "1",
            "reason": reason,
            "session": session,
        }
    )


def test_a_new_session_is_a_new_life_whatever_its_boot() -> None:
    """A wiped state directory (re-flashed card, replaced board, corrupt outbox set aside)
    starts the boot count again at 1; its birth must not be discarded as stale."""
    fleet = Fleet([ManifestDevice(id="pi")])
    old, new = "a" * 16, "b" * 16
    assert fleet.apply_status(session_status(Presence.ONLINE, 14, old, ts=10)) == "applied"
    assert fleet.apply_status(session_status(Presence.OFFLINE, 14, old, "shutdown", 20)) == (
        "applied"
    )
    assert fleet.apply_status(session_status(Presence.ONLINE, 1, new, ts=30)) == "applied"
    record = fleet.get("pi")
    assert record is not None
    assert (record.presence, record.boot, record.session) == (PresenceState.ONLINE, 1, new)
    # The old life's late will, of a higher boot, is stale all the same: its session ended.
    late = session_status(Presence.OFFLINE, 14, old, "connection_lost", 10)
    assert fleet.apply_status(late) == "stale"
    assert record.presence is PresenceState.ONLINE
    # A will of a life this gateway never met, older than the life it knows: stale too.
    unmet = session_status(Presence.OFFLINE, 3, "c" * 16, "connection_lost", 5)
    assert fleet.apply_status(unmet) == "stale"
    assert record.presence is PresenceState.ONLINE
