"""Who serves the coordinator socket: checks a client makes before it sends anything.

A worker hands its coordinator keys and values (session tokens, and with
``codec="pickle"`` whatever it unpickles from the replies), so it must talk to a
coordinator of its own user only. Two checks, both on the client's side:

* :func:`check_socket_dir`: the socket's folder is a real folder (not a
  symlink) owned by this uid with no group/other permission bits, so no other
  user can have put a socket there;
* :func:`check_peer`: the process listening on the connected socket runs as
  this uid (``SO_PEERCRED``), which also covers a folder swapped between the
  check and the connect.

:func:`ensure_socket_dir` creates the folder safely (the spawner's first use).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
from typing import Protocol

from mtcache.errors import UntrustedSocket

__all__ = ["UntrustedSocket", "check_peer", "check_socket_dir", "ensure_socket_dir"]

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class _SockOpts(Protocol):
    """A connected socket, or the transport's stand-in for it (asyncio, uvloop)."""

    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


def _folder(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def check_socket_dir(path: str) -> None:
    """Check the folder of the socket ``path``: a real folder (``lstat``: not a
    symlink), owned by this process's effective uid, without group or other
    permission bits. Returns None if so.

    :raises FileNotFoundError: the folder does not exist (a spawning client then
        creates it with :func:`ensure_socket_dir`).
    :raises UntrustedSocket: it exists but fails the check; the message names
        the folder, what was found and what is expected.
    """
    folder = _folder(path)
    st = os.lstat(folder)
    uid = os.geteuid()
    if stat.S_ISLNK(st.st_mode):
        found = "is a symlink"
    elif not stat.S_ISDIR(st.st_mode):
        found = "is not a folder"
    elif st.st_uid != uid:
        found = f"is owned by uid {st.st_uid}"
    elif st.st_mode & 0o077:
        found = f"has mode {stat.S_IMODE(st.st_mode):04o}"
    else:
        return
    raise UntrustedSocket(
        f"refusing to use a coordinator socket in {folder!r}: it {found}; "
        f"expected a folder owned by uid {uid} with mode 0700"
    )


def ensure_socket_dir(path: str) -> None:
    """Create the folder of the socket ``path`` with mode 0700 if it is missing
    (its missing parents with the default mode, as ``mkdir -p``), then check it
    with :func:`check_socket_dir`. An existing folder is never chmod-ed or
    chown-ed: a folder that fails the check is refused, not repaired.

    :raises UntrustedSocket: the folder (found or just made) fails the check.
    :raises OSError: it cannot be created.
    """
    folder = _folder(path)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    check_socket_dir(path)


def check_peer(sock: socket.socket | _SockOpts) -> int:
    """Check that the process serving the connected Unix socket ``sock`` runs as
    this process's effective uid (``SO_PEERCRED``: its credentials when it began
    listening) and return its pid. Call it before sending anything.

    :raises UntrustedSocket: the peer runs as another uid; the message names its
        pid and uid.
    :raises OSError: the credentials cannot be read (not a connected Unix socket).
    """
    pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    if uid != os.geteuid():
        raise UntrustedSocket(
            f"refusing the coordinator socket served by pid {pid} running as uid {uid}; expected uid {os.geteuid()}"
        )
    return int(pid)
