"""Resident memory of processes from ``/proc`` (no psutil): RSS, PSS and shared memory.

RSS counts every resident page a process maps, shared ones in full; PSS divides
each shared page by the number of processes mapping it, so the PSS of several
processes adds up to what they occupy together. Files in ``/dev/shm`` (tmpfs)
are counted apart: their pages are memory as soon as they are allocated
(mtcache's coordinator reserves its shared-memory mirror with
``posix_fallocate`` as it fills), touched or not, so a fair total is the PSS outside them
plus their allocated size, once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Memory", "memory_of", "total"]

SHM = "/dev/shm/"


@dataclass(frozen=True)
class Memory:
    """Bytes: ``rss`` and ``pss`` of the processes, ``shm_pss`` the part of their
    PSS in ``/dev/shm`` mappings, ``shm_files`` those files (path -> allocated bytes)."""

    rss: int
    pss: int
    shm_pss: int = 0
    shm_files: tuple[tuple[str, int], ...] = ()

    @property
    def shm_reserved(self) -> int:
        """Allocated bytes of the ``/dev/shm`` files mapped, each counted once."""
        return sum(size for _, size in self.shm_files)

    @property
    def fair(self) -> int:
        """PSS outside ``/dev/shm`` plus the ``/dev/shm`` files' allocated size."""
        return self.pss - self.shm_pss + self.shm_reserved


def _allocated(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except OSError:  # removed meanwhile
        return 0


def memory_of(pid: int) -> Memory:
    """The memory of process ``pid``: VmRSS of ``status``, Pss of ``smaps`` per mapping.

    :raises OSError: the process is gone or its files cannot be read.
    """
    proc = Path("/proc") / str(pid)
    rss = 0
    for line in (proc / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    pss = shm_pss = 0
    shm: set[str] = set()
    mapping = ""
    for line in (proc / "smaps").read_text().splitlines():
        first = line.partition(" ")[0]
        if not first.endswith(":"):  # a mapping's header: "start-end perms offset dev inode [path]"
            parts = line.split(maxsplit=5)
            mapping = parts[5] if len(parts) == 6 else ""
            if mapping.startswith(SHM):
                shm.add(mapping.removesuffix(" (deleted)"))
        elif first == "Pss:":
            kib = int(line.split()[1]) * 1024
            pss += kib
            if mapping.startswith(SHM):
                shm_pss += kib
    return Memory(rss, pss, shm_pss, tuple(sorted((p, _allocated(p)) for p in shm)))


def total(parts: list[Memory]) -> Memory:
    """The sums over ``parts``, with each ``/dev/shm`` file counted once."""
    files = dict(f for m in parts for f in m.shm_files)
    return Memory(sum(m.rss for m in parts), sum(m.pss for m in parts), sum(m.shm_pss for m in parts),
                  tuple(sorted(files.items())))
