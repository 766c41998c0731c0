"""SysfsTree over real directories, FakeSysfsTree rendering, and the back ends' pins and sysfs."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPin

from edgetwin.hardware.backends import EmulatedBackend, RealBackend
from edgetwin.hardware.errors import BusError, DataError, SensorMissingError
from edgetwin.hardware.sysfs import FakeSysfsTree, SysfsDevice, SysfsTree

# -- SysfsTree -------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> SysfsTree:
    (tmp_path / "class" / "thing" / "a").mkdir(parents=True)
    (tmp_path / "class" / "thing" / "b").mkdir()
    (tmp_path / "class" / "thing" / "a" / "value").write_text("42\n")
    (tmp_path / "class" / "thing" / "a" / "binary").write_bytes(b"\xff\xfe\x00")
    return SysfsTree(tmp_path)


def test_read_text_and_list(tree: SysfsTree) -> None:
    assert tree.read_text("class/thing/a/value") == "42\n"
    assert tree.list("class/thing") == ["a", "b"]
    assert tree.list("class/thing/a") == ["binary", "value"]


def test_missing_file_is_a_missing_sensor(tree: SysfsTree) -> None:
    with pytest.raises(
        SensorMissingError, match=r"probe: .*class/thing/c/value does not exist"
    ) as info:
        tree.read_text("class/thing/c/value", what="probe")
    assert info.value.errno == errno.ENOENT
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with pytest.raises(SensorMissingError):
        tree.list("class/other")


def test_other_os_errors_are_bus_errors(tree: SysfsTree) -> None:
    with pytest.raises(BusError, match=r"reading .*class/thing/a failed") as info:
        tree.read_text("class/thing/a")  # a directory: EISDIR
    assert info.value.errno == errno.EISDIR
    assert isinstance(info.value.__cause__, IsADirectoryError)
    with pytest.raises(BusError):
        tree.list("class/thing/a/value")  # not a directory


def test_bytes_that_are_not_text_are_a_data_error(tree: SysfsTree) -> None:
    with pytest.raises(DataError, match="not text"):
        tree.read_text("class/thing/a/binary")


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside", "class/../../x"])
def test_paths_may_not_leave_the_root(tree: SysfsTree, bad: str) -> None:
    with pytest.raises(ValueError, match="relative"):
        tree.read_text(bad)


# -- FakeSysfsTree ---------------------------------------------------------------------------


class Counter(SysfsDevice):
    """A device whose `count` file shows how often it was read."""

    def __init__(self) -> None:
        self.reads = 0
        self.power_ons = 0
        self.fail_with: int | None = None

    def file_names(self) -> tuple[str, ...]:
        return ("count", "label")

    def render(self, name: str) -> str:
        if name == "label":
            return "counter\n"
        if self.fail_with is not None:
            raise OSError(self.fail_with, "injected")
        self.reads += 1
        return f"{self.reads}\n"

    def power_on(self) -> None:
        self.power_ons += 1


@pytest.fixture
def fake(tmp_path: Path) -> FakeSysfsTree:
    return FakeSysfsTree(tmp_path / "sys")


def test_a_registered_file_is_rendered_right_before_each_read(fake: FakeSysfsTree) -> None:
    values = iter(["first\n", "second\n"])
    fake.register("class/x/value", lambda: next(values))
    assert fake.path("class/x/value").read_text() == ""  # present, not yet rendered
    assert fake.read_text("class/x/value") == "first\n"
    assert fake.read_text("class/x/value") == "second\n"
    assert fake.path("class/x/value").read_text() == "second\n"  # really on disk
    fake.unregister("class/x/value")
    assert fake.read_text("class/x/value") == "second\n"  # static from now on


def test_static_files_and_a_plain_tree_over_the_same_root(fake: FakeSysfsTree) -> None:
    fake.write_text("class/y/type", "static\n")
    assert SysfsTree(fake.root).read_text("class/y/type") == "static\n"


def test_attached_device_renders_its_files(fake: FakeSysfsTree) -> None:
    device = Counter()
    fake.attach("class/counter/c0", device)
    assert fake.list("class/counter/c0") == ["count", "label"]
    assert fake.read_text("class/counter/c0/count") == "1\n"
    assert fake.read_text("class/counter/c0/count") == "2\n"
    assert fake.read_text("class/counter/c0/label") == "counter\n"
    assert fake.device_at("class/counter/c0") is device
    with pytest.raises(ValueError, match="already holds"):
        fake.attach("class/counter/c0", Counter())
    assert fake.attach_if_free("class/counter/c0", Counter) is device
    assert fake.attach_if_free("class/counter/c1", Counter) is not device


def test_render_failure_is_a_bus_error(fake: FakeSysfsTree) -> None:
    device = Counter()
    fake.attach("class/counter/c0", device)
    device.fail_with = errno.EIO
    with pytest.raises(BusError) as info:
        fake.read_text("class/counter/c0/count")
    assert info.value.errno == errno.EIO


def test_unplug_removes_the_directory_and_replug_powers_up(fake: FakeSysfsTree) -> None:
    device = Counter()
    fake.attach("class/counter/c0", device)
    fake.unplug("class/counter/c0")
    assert not fake.path("class/counter/c0").exists()
    with pytest.raises(SensorMissingError):
        fake.read_text("class/counter/c0/count")
    assert fake.list("class/counter") == []
    assert device.reads == 0  # nothing rendered while unplugged
    fake.replug("class/counter/c0")
    assert device.power_ons == 1
    assert fake.read_text("class/counter/c0/count") == "1\n"
    fake.replug("class/counter/c0")  # plugged in already: nothing happens
    assert device.power_ons == 1


def test_detach_removes_device_and_files(fake: FakeSysfsTree) -> None:
    device = Counter()
    fake.attach("class/counter/c0", device)
    assert fake.detach("class/counter/c0") is device
    assert fake.device_at("class/counter/c0") is None
    assert not fake.path("class/counter/c0").exists()
    with pytest.raises(KeyError):
        fake.detach("class/counter/c0")
    with pytest.raises(KeyError):
        fake.unplug("class/counter/c0")


# -- EmulatedBackend: one MockFactory, one temporary sysfs tree ------------------------------


def test_emulated_pin_factory_is_one_mock_factory_per_backend() -> None:
    with EmulatedBackend() as first, EmulatedBackend() as second:
        factory = first.pin_factory()
        assert isinstance(factory, MockFactory)
        assert first.pin_factory() is factory
        assert second.pin_factory() is not factory
        assert factory.pin_class is MockPin
    assert Device.pin_factory is None  # gpiozero's global was never touched


def test_emulated_sysfs_is_made_lazily_and_removed_on_close() -> None:
    backend = EmulatedBackend()
    tree = backend.sysfs
    assert isinstance(tree, FakeSysfsTree)
    assert backend.sysfs is tree
    assert tree.root.is_dir()
    tree.write_text("class/x/y", "1\n")
    backend.close()
    assert not tree.root.exists()
    fresh = backend.sysfs  # usable again after close, like its buses
    assert fresh.root != tree.root
    assert fresh.list("") == []
    backend.close()
    assert not fresh.root.exists()


def test_emulated_close_closes_the_mock_factory() -> None:
    backend = EmulatedBackend()
    factory = backend.pin_factory()
    pin = factory.pin(17)
    pin.function = "output"
    backend.close()
    assert factory.pins == {}
    assert pin.function == "input"  # MockPin.close() puts a pin back to input
    assert backend.pin_factory() is not factory
    backend.close()


# -- RealBackend: /sys and gpiozero's own choice of factory ----------------------------------


def test_real_backend_sysfs_root(tmp_path: Path) -> None:
    assert RealBackend().sysfs.root == Path("/sys")
    (tmp_path / "class").mkdir()
    backend = RealBackend(sysfs_root=tmp_path)
    assert isinstance(backend.sysfs, SysfsTree)
    assert backend.sysfs.list("") == ["class"]


def test_real_pin_factory_follows_gpiozero_pin_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    with RealBackend() as backend:
        factory = backend.pin_factory()
        assert isinstance(factory, MockFactory)
        assert backend.pin_factory() is factory
    assert Device.pin_factory is None


def test_real_pin_factory_missing_names_what_was_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "nosuchfactory")
    with pytest.raises(SensorMissingError, match="GPIOZERO_PIN_FACTORY=nosuchfactory") as info:
        RealBackend().pin_factory()
    assert "nosuchfactory: no such gpiozero pin factory" in str(info.value)
    assert "lgpio" in str(info.value)  # the hint
    assert info.value.errno == errno.ENODEV
    assert Device.pin_factory is None
