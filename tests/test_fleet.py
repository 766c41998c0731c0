"""Presence bookkeeping: births, last wills, and late wills of dead connections."""

from __future__ import annotations

from edgetwin.agent.contract import DesiredConfig, Presence, ReportedConfig, Status
from edgetwin.gateway.config import ManifestDevice
from edgetwin.gateway.duplicates import FLAP_BIRTHS, FLAP_WINDOW, DuplicateWatch
from edgetwin.gateway.fleet import MAX_VERSION, DeviceTwin, Fleet, PresenceState


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


def test_a_rejected_version_below_the_applied_one_is_rejected_not_in_sync() -> None:
    """Before: an agent at version 4 refuses a version 2 (a device deleted and added again);
    the twin said in_sync because 4 >= 2."""
    twin = DeviceTwin("pi", True)
    twin.desired = DesiredConfig(device="pi", version=2, sensors={})
    twin.reported = ReportedConfig(
        device="pi",
        ts=1.0,
        status="rejected",
        applied_version=4,
        rejected_version=2,
        reason="version 2 is older than applied version 4",
    )
    assert twin.config_sync() == "rejected"
    assert twin.delta()["desired_version"] == 2
    twin.reported = ReportedConfig(device="pi", ts=1.0, status="applied", applied_version=4)
    assert twin.config_sync() == "pending"  # runs another version than the desired one


def test_a_new_version_is_above_every_version_seen_even_after_removal() -> None:
    fleet = Fleet([ManifestDevice(id="pi")])
    fleet.apply_desired(DesiredConfig(device="pi", version=3, sensors={}), "pi")
    fleet.apply_reported(
        ReportedConfig(
            device="pi",
            ts=1.0,
            status="rejected",
            applied_version=2,
            rejected_version=7,
            reason="no",
        )
    )
    assert fleet.next_version("pi") == 8
    fleet.remove("pi")
    fleet.apply_desired(None, "pi")
    fleet.add(ManifestDevice(id="pi"))
    assert fleet.next_version("pi") == 8
    # A retained report of a device never in the manifest counts too.
    fleet.apply_reported(
        ReportedConfig(device="other", ts=1.0, status="applied", applied_version=5)
    )
    assert fleet.next_version("other") == 6
    # One beyond the contract's integers does not use the version space up.
    fleet.apply_desired(DesiredConfig(device="pi", version=MAX_VERSION + 1, sensors={}), "pi")
    assert fleet.next_version("pi") == 8


def test_births_that_no_single_agent_gives_raise_a_duplicate_suspicion() -> None:
    watch = DuplicateWatch()
    # One agent: restarts raise the boot, reconnects keep it, a few of them are no alarm.
    for at, boot in [(0.0, 3), (1.0, 4), (2.0, 4), (3.0, 4)]:
        assert watch.birth("pi", boot, at) is None
    # Another process with an older counter is alive.
    first = watch.birth("pi", 3, 4.0)
    assert first is not None
    assert first.new
    assert "boots [3, 4]" in first.reason
    assert watch.birth("pi", 4, 5.0) is None
    again = watch.birth("pi", 3, 6.0)
    assert again is not None
    assert not again.new  # one log line per suspicion
    # Same boot, but more births than a backoff allows (identical fresh agents).
    flapping = [watch.birth("fresh", 1, i * 0.5) for i in range(FLAP_BIRTHS)]
    assert flapping[:-1] == [None] * (FLAP_BIRTHS - 1)
    assert flapping[-1] is not None
    assert f"{FLAP_BIRTHS} births" in flapping[-1].reason
    # Births spread wider than the window are a flaky link, not a duplicate.
    for i in range(3 * FLAP_BIRTHS):
        assert watch.birth("slow", 1, i * FLAP_WINDOW / (FLAP_BIRTHS - 2)) is None


def test_sessions_taking_turns_are_a_duplicate_and_a_reimaged_board_is_not() -> None:
    watch = DuplicateWatch()
    a, b, c = "a" * 16, "b" * 16, "c" * 16
    # One agent reconnecting keeps its session; a re-imaged board comes back with boot 1 in a
    # new session: neither is a second agent.
    for at, boot, session in [(0.0, 14, a), (1.0, 14, a), (2.0, 1, b), (3.0, 1, b)]:
        assert watch.birth("pi", boot, at, session) is None
    # Two processes, each taking the connection over in turn: an old session comes back.
    assert watch.birth("twins", 1, 0.0, a) is None
    assert watch.birth("twins", 1, 1.0, c) is None
    suspicion = watch.birth("twins", 1, 2.0, a)
    assert suspicion is not None
    assert "2 agent sessions taking turns" in suspicion.reason
