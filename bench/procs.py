"""This machine's processes from ``/proc``: the tree under a process, command lines, CPU, environment.

A local Ray started by this process (``ray.init`` in a benchmark or a test session) lives in its
descendants: the raylet, the GCS, the dashboard, every worker — Serve's controller, proxy and replicas
among them. The benchmarks read their CPU time from here and the tests find the processes they inspect or
kill (only this session's, never another user's). Linux only.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def parents() -> dict[int, int]:
    """``{pid: parent pid}`` of every live process."""
    out: dict[int, int] = {}
    for d in PROC.iterdir():
        if not d.name.isdigit():
            continue
        try:  # the command name in (…) may hold spaces and parentheses: the fields follow the last ')'
            out[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    return out


def descendants(*roots: int) -> list[int]:
    """Pids of every live descendant of ``roots`` (none given: of this process)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents().items():
        children.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    out: list[int] = []
    todo = list(roots or (os.getpid(),))
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in seen:
                seen.add(c)
                out.append(c)
                todo.append(c)
    return out


def cmdline(pid: int) -> str:
    """The process title / command line with spaces between arguments ('' when gone)."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds the process has used (None when gone)."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def environ(pid: int) -> dict[str, str]:
    """The environment the process started with (``/proc/<pid>/environ``)."""
    raw = (PROC / str(pid) / "environ").read_text(errors="replace")
    return dict(kv.split("=", 1) for kv in raw.split("\0") if "=" in kv)


def tree(*roots: int) -> dict[int, str]:
    """``{pid: command line}`` of the live descendants of ``roots`` (none given: of this process)."""
    return {pid: cmd for pid in descendants(*roots) if (cmd := cmdline(pid))}
