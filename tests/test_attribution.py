"""bench/attribution.py reads strace's and perf's summaries as they print them (sample outputs, no tracer)."""

from __future__ import annotations

import http.client  # noqa: F401 (before bench/ goes on sys.path, where bench/http.py would stand in for it)
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "attribution.py"

STRACE = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 46.12    0.311242          11     27331           getpid
 20.45    0.138022          11     12205           epoll_pwait
 18.61    0.125599          15      8324        12 write
 14.73    0.099380          11      8325           read
------ ----------- ----------- --------- --------- ----------------
100.00    0.674891          12     56221        12 total
"""

PERF = """\
# To display the perf.data header info, please use --header/--header-only options.
#
# Total Lost Samples: 0
#
# Samples: 24K of event 'cpu-clock'
# Event count (approx.): 4897400000
#
# Overhead  Shared Object
# ........  .........................................
#
    58.20%  libpython3.11.so.1.0
    29.27%  [kernel.kallsyms]
     4.44%  loop.cpython-311-x86_64-linux-gnu.so
     3.59%  libc.so.6
     1.40%  _cmsgpack.cpython-311-x86_64-linux-gnu.so
     0.39%  [vdso]
"""


@pytest.fixture(scope="module")
def attribution() -> ModuleType:
    spec = importlib.util.spec_from_file_location("attribution", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_strace_summary(attribution: ModuleType) -> None:
    assert attribution.parse_strace(STRACE) == {"getpid": 27331, "epoll_pwait": 12205, "write": 8324, "read": 8325}


def test_perf_shares_by_part(attribution: ModuleType) -> None:
    shares = attribution.parse_perf_dso(PERF)
    assert shares["libpython3.11.so.1.0"] == 58.2 and shares["[vdso]"] == 0.39
    assert attribution.group(shares) == pytest.approx(
        {"kernel": 29.27, "CPython interpreter": 58.2, "uvloop": 4.44, "libc": 3.98, "other C extensions": 1.4})


def test_a_skipped_pass_is_named_in_the_report(attribution: ModuleType) -> None:
    row = {"wall_us_per_call": 80.0, "cpu_us_per_call": 32.0, "context_switches_per_call": 1.0,
           "syscalls_per_call": {"read": 1.0}, "cpu_share_by_binary": "skipped: perf recorded no samples"}
    text = attribution.report({"PING": row, "set": {**row, "cpu_share_by_binary": dict.fromkeys(
        attribution.PARTS, 20.0)}})
    assert "| system call `read` | 1.00 | 1.00 |" in text
    assert "| CPU in kernel: µs (share of samples) | - | 6.40 (20.0 %) |" in text
    assert "- PING, CPU by binary: perf recorded no samples" in text
