"""Fresh fakes for every test: a manual epoch clock, a virtual timer, a fake bus."""

from __future__ import annotations

import pytest

from edgetwin.hardware.bus import FakeI2CBus
from edgetwin.hardware.timing import ManualClock, VirtualTimer


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def timer() -> VirtualTimer:
    return VirtualTimer()


@pytest.fixture
def bus() -> FakeI2CBus:
    return FakeI2CBus(1)
