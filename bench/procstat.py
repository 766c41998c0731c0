"""What /proc says about a process and its descendants, read the same way by every benchmark.

CPU is user + system time; memory is PSS (proportional set size: pages shared among processes
split between them, so a sum over a process tree counts each page once), from smaps_rollup.
A process that has exited reads as zero, so a sample taken while workers come and go is short
by what they held, never an exception.
"""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) may contain spaces: count the fields after its ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except OSError:
        return 0


def status_kib(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    """Fields of /proc/PID/status (VmRSS, RssAnon, VmHWM, Threads, ...), as numbers."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in keys:
                    values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (workers, multiprocessing's helpers, a broker child)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for child in kids:
            found += [int(child), *children(int(child))]
    return found


def tree(pid: int) -> list[int]:
    return [pid, *children(pid)]


def tree_pss_bytes(pid: int) -> int:
    return sum(pss_bytes(p) for p in tree(pid))


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in tree(pid))
