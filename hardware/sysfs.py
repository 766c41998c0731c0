"""sysfs as drivers see it: a tree of small text files, real or emulated.

Drivers that read the kernel's sysfs (1-Wire thermometers, thermal zones) take a `SysfsTree`
and only ever call `read_text` and `list` on it, with paths relative to the tree's root. The
root is /sys on a board, a directory of golden files in a test, or the private temporary
directory of an emulated back end, whose `FakeSysfsTree` rewrites a file with fresh content
right before each read, as the kernel generates a sysfs attribute when it is read
(Documentation/filesystems/sysfs.rst: "show() methods ... are called when the file is read").

OSError is translated here, once: a missing file or directory means a missing device
(SensorMissingError), any other failure a failed transfer (BusError).
"""

from __future__ import annotations

import builtins
import errno
import functools
import shutil
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from edgetwin.hardware.errors import BusError, DataError, HardwareError, SensorMissingError

Renderer = Callable[[], str]
"""Produces a file's content at the moment it is read; raises OSError for a failed read."""


class SysfsTree:
    """Read-only access to a sysfs-like tree under `root`.

    Paths are relative to the root ("bus/w1/devices/28-000005e2fdc3/w1_slave") and may not
    leave it: an absolute path or ".." is a programming error (ValueError), not a device fault.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def path(self, relative: str) -> Path:
        """The file system path of `relative` under the root ("" is the root itself)."""
        parts = PurePosixPath(relative)
        if parts.is_absolute() or ".." in parts.parts:
            raise ValueError(f"sysfs paths are relative to the tree's root, got {relative!r}")
        return self.root.joinpath(*parts.parts)

    def read_text(self, relative: str, *, what: str | None = None) -> str:
        """The content of one attribute file.

        Raises SensorMissingError when it does not exist (the device is gone or the kernel
        driver is not loaded), BusError for any other OSError (the kernel's show() failed,
        e.g. EIO from a 1-Wire transfer) and DataError for bytes that are not text.
        `what` prefixes the message, e.g. "ds18b20 28-000005e2fdc3".
        """
        path = self.path(relative)
        try:
            return self._read(relative, path)
        except UnicodeDecodeError as exc:
            raise DataError(f"{_prefix(what)}{path} is not text: {exc.reason}") from exc
        except OSError as exc:
            raise _translate(exc, path, what) from exc

    def list(self, relative_dir: str, *, what: str | None = None) -> builtins.list[str]:
        """Names in a directory, sorted; errors as for `read_text`."""
        path = self.path(relative_dir)
        try:
            return sorted(entry.name for entry in path.iterdir())
        except OSError as exc:
            raise _translate(exc, path, what) from exc

    def _read(self, relative: str, path: Path) -> str:
        return path.read_text(encoding="utf-8")


def _prefix(what: str | None) -> str:
    return f"{what}: " if what else ""


def _translate(exc: OSError, path: Path, what: str | None) -> HardwareError:
    if isinstance(exc, HardwareError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return SensorMissingError(errno.ENOENT, f"{_prefix(what)}{path} does not exist")
    code = exc.errno if exc.errno is not None else errno.EIO
    return BusError(code, f"{_prefix(what)}reading {path} failed: {exc.strerror or exc}")


# -- emulation ---------------------------------------------------------------------------------


class SysfsDevice(ABC):
    """A device emulated at the level of its sysfs directory: the attribute files it shows."""

    @abstractmethod
    def file_names(self) -> tuple[str, ...]:
        """The attribute files in the device's directory."""

    @abstractmethod
    def render(self, name: str) -> str:
        """The content of file `name` as the kernel would show it now.

        Called right before every read of that file; raise OSError for a read that fails.
        """

    def power_on(self) -> None:  # noqa: B027 - a device without volatile state need not override
        """Called when the device is plugged back in."""


class FakeSysfsTree(SysfsTree):
    """A sysfs tree on disk whose files can be rendered by emulators at read time.

    `register(path, renderer)` makes every `read_text(path)` first rewrite the file with
    `renderer()`, so the driver reads, through the same file system calls it uses on a real
    /sys, what an emulator computes from its signal models at that instant. Static files are
    written once with `write_text`. Devices (`attach`) are directories of rendered files;
    `unplug` removes a device's directory from disk, which a driver sees as the kernel removing
    it, and `replug` restores it. One lock serialises rendering and reading, so two threads
    never see a half-written file.
    """

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._renderers: dict[str, Renderer] = {}
        self._devices: dict[str, SysfsDevice] = {}
        self._unplugged: set[str] = set()
        self._lock = threading.RLock()

    # -- files -------------------------------------------------------------------------------

    def write_text(self, relative: str, content: str) -> None:
        """Create or replace a static file, creating its directories."""
        path = self.path(relative)
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")

    def register(self, relative: str, renderer: Renderer) -> None:
        """Render `relative` with `renderer` before each read; an empty file stands in between.

        While the file's directory is absent (an unplugged device) nothing is rendered and
        reads fail as they would on a real tree.
        """
        path = self.path(relative)
        with self._lock:
            self._renderers[str(PurePosixPath(relative))] = renderer
            if not self._is_unplugged(relative):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()

    def unregister(self, relative: str) -> None:
        with self._lock:
            self._renderers.pop(str(PurePosixPath(relative)), None)

    def remove(self, relative: str) -> None:
        """Delete a file or a whole directory from disk (renderers stay registered)."""
        path = self.path(relative)
        with self._lock:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def _read(self, relative: str, path: Path) -> str:
        with self._lock:
            renderer = self._renderers.get(str(PurePosixPath(relative)))
            if renderer is not None and path.parent.is_dir():
                path.write_text(renderer(), encoding="utf-8")
            return path.read_text(encoding="utf-8")

    # -- devices -----------------------------------------------------------------------------

    def attach(self, directory: str, device: SysfsDevice) -> None:
        """Create `directory` with `device`'s files, each rendered by the device when read."""
        key = str(PurePosixPath(directory))
        with self._lock:
            if key in self._devices:
                raise ValueError(f"{directory!r} in {self!r} already holds {self._devices[key]!r}")
            self._devices[key] = device
            self._unplugged.discard(key)
            self.path(directory).mkdir(parents=True, exist_ok=True)
            for name in device.file_names():
                self.register(f"{key}/{name}", functools.partial(device.render, name))

    def attach_if_free(self, directory: str, build: Callable[[], SysfsDevice]) -> SysfsDevice:
        """The device at `directory`, attaching `build()` first if there is none. Atomic."""
        key = str(PurePosixPath(directory))
        with self._lock:
            device = self._devices.get(key)
            if device is None:
                device = build()
                self.attach(key, device)
            return device

    def device_at(self, directory: str) -> SysfsDevice | None:
        """The device attached at `directory`, plugged in or not."""
        with self._lock:
            return self._devices.get(str(PurePosixPath(directory)))

    def detach(self, directory: str) -> SysfsDevice:
        """Remove the device and its directory for good, and return it."""
        key = str(PurePosixPath(directory))
        with self._lock:
            try:
                device = self._devices.pop(key)
            except KeyError:
                raise KeyError(f"no device at {directory!r} in {self!r}") from None
            for name in device.file_names():
                self.unregister(f"{key}/{name}")
            self._unplugged.discard(key)
            self.remove(key)
            return device

    def unplug(self, directory: str) -> None:
        """Remove the device's directory, as the kernel does once the device stops answering;
        the device stays attached for `replug`."""
        key = str(PurePosixPath(directory))
        with self._lock:
            if key not in self._devices:
                raise KeyError(f"no device at {directory!r} in {self!r}")
            self._unplugged.add(key)
            self.remove(key)

    def replug(self, directory: str) -> None:
        """Bring an unplugged device's directory back; the device powers up again."""
        key = str(PurePosixPath(directory))
        with self._lock:
            if key not in self._unplugged:
                return
            self._unplugged.discard(key)
            device = self._devices[key]
            self.path(key).mkdir(parents=True, exist_ok=True)
            for name in device.file_names():
                self.path(f"{key}/{name}").touch()
            device.power_on()

    def _is_unplugged(self, relative: str) -> bool:
        path = PurePosixPath(relative)
        return any(str(parent) in self._unplugged for parent in path.parents)
