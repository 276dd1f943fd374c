"""The shared-memory version table: one writer, readers in other processes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtcache.shm import DEFAULT_SLOTS, VersionTable, shm_dir, slot_of

SLOTS = 64


@pytest.fixture
def table(tmp_path: Path) -> Iterator[VersionTable]:
    t = VersionTable.create(SLOTS, directory=tmp_path)
    try:
        yield t
    finally:
        t.close()


def _child(code: str, *args: str) -> subprocess.Popen[str]:
    # another process, with a hash seed of its own: Python's hash() would differ there
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


# -- create ---------------------------------------------------------------------


def test_create_makes_a_zeroed_0600_file(table: VersionTable, tmp_path: Path) -> None:
    path = Path(table.path)
    assert path.parent == tmp_path
    assert path.name.startswith("mtcache-") and path.name.endswith(".ver")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert table.owner is True
    assert table.slots == SLOTS
    assert [table.get(i) for i in range(SLOTS)] == [0] * SLOTS


def test_create_uses_prefix_and_default_slots(tmp_path: Path) -> None:
    t = VersionTable.create(prefix="mtcache-ns", directory=tmp_path)
    try:
        assert Path(t.path).name.startswith(f"mtcache-ns-{os.getpid()}-")
        assert t.slots == DEFAULT_SLOTS
        assert t.get(DEFAULT_SLOTS - 1) == 0
    finally:
        t.close()


def test_create_defaults_to_shm_dir() -> None:
    t = VersionTable.create(8)
    try:
        assert Path(t.path).parent == shm_dir()
        assert Path(t.path).exists()
    finally:
        t.close()
    assert not Path(t.path).exists()


def test_two_tables_have_distinct_paths_and_generations(tmp_path: Path) -> None:
    a = VersionTable.create(8, directory=tmp_path)
    b = VersionTable.create(8, directory=tmp_path)
    try:
        assert a.path != b.path
        assert a.generation != b.generation
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("slots", [0, -1, True, 1.5, "8", None])
def test_create_rejects_bad_slot_counts(slots: object, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="slots"):
        VersionTable.create(slots, directory=tmp_path)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# -- bump -----------------------------------------------------------------------


def test_bump_returns_the_new_value_and_touches_one_slot(table: VersionTable) -> None:
    assert table.bump(3) == 1
    assert table.bump(3) == 2
    assert table.get(3) == 2
    assert [table.get(i) for i in range(SLOTS) if i != 3] == [0] * (SLOTS - 1)


def test_bump_key_bumps_the_keys_slot(table: VersionTable) -> None:
    slot = table.slot("user:1")
    assert table.bump_key("user:1") == 1
    assert table.get(slot) == 1
    assert table.slot("user:1") == slot_of("user:1", SLOTS)


def test_bump_all_moves_every_counter(table: VersionTable) -> None:
    table.bump(0)
    table.bump(0)
    table.bump(SLOTS - 1)
    table.bump_all()
    counters = [table.get(i) for i in range(SLOTS)]
    assert counters[0] == 3
    assert counters[SLOTS - 1] == 2
    assert counters[1 : SLOTS - 1] == [1] * (SLOTS - 2)


def test_generation_is_fixed(table: VersionTable) -> None:
    generation = table.generation
    table.bump(1)
    table.bump_all()
    assert table.generation == generation


# -- attach -----------------------------------------------------------------------


def test_attach_sees_the_owners_counters(table: VersionTable) -> None:
    table.bump(5)
    reader = VersionTable.attach(table.path)
    try:
        assert reader.owner is False
        assert reader.slots == SLOTS
        assert reader.generation == table.generation
        assert reader.get(5) == 1
        table.bump(5)
        table.bump_all()
        assert reader.get(5) == 3
        assert reader.get(6) == 1
    finally:
        reader.close()


def test_attached_table_is_read_only(table: VersionTable) -> None:
    reader = VersionTable.attach(table.path)
    try:
        with pytest.raises(TypeError):
            reader.bump(0)
        assert table.get(0) == 0
    finally:
        reader.close()


def test_reader_close_keeps_the_segment(table: VersionTable) -> None:
    reader = VersionTable.attach(table.path)
    reader.close()
    reader.close()
    assert Path(table.path).exists()
    table.bump(0)
    assert table.get(0) == 1


def test_owner_close_unlinks_and_is_idempotent(tmp_path: Path) -> None:
    t = VersionTable.create(8, directory=tmp_path)
    reader = VersionTable.attach(t.path)
    try:
        t.close()
        assert not Path(t.path).exists()
        t.close()
        # a reader that still maps the segment keeps reading it
        assert reader.get(0) == 0
    finally:
        reader.close()


def test_attach_missing_path_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        VersionTable.attach(str(tmp_path / "missing.ver"))


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"junk", id="too-small"),
        pytest.param(b"\x00" * 8 * 72, id="zeros-no-magic"),
        pytest.param(os.urandom(8 * 72), id="random"),
    ],
)
def test_attach_junk_raises_valueerror(tmp_path: Path, content: bytes) -> None:
    junk = tmp_path / "junk.ver"
    junk.write_bytes(content)
    with pytest.raises(ValueError, match="version table"):
        VersionTable.attach(str(junk))


def test_attach_truncated_table_raises_valueerror(table: VersionTable, tmp_path: Path) -> None:
    cut = tmp_path / "cut.ver"
    cut.write_bytes(Path(table.path).read_bytes()[:-8])
    with pytest.raises(ValueError, match="version table"):
        VersionTable.attach(str(cut))


# -- across processes ---------------------------------------------------------------


def test_slot_of_is_crc32_modulo_slots() -> None:
    assert slot_of("abc", 2**32) == zlib.crc32(b"abc") == 0x352441C2
    assert slot_of("abc", 1000) == 0x352441C2 % 1000
    assert slot_of("é", 2**32) == zlib.crc32("é".encode())


def test_slot_of_is_stable_across_processes() -> None:
    keys = ["a", "user:42", "é-ключ-鍵", "x" * 1024, "page:/index.html?q=1"]
    code = "import sys\nfrom mtcache.shm import slot_of\nfor k in sys.argv[1:]: print(slot_of(k, 65536))"
    child = _child(code, *keys)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert [int(line) for line in out.split()] == [slot_of(k, 65536) for k in keys]


READER = """
import sys
from mtcache.shm import VersionTable
t = VersionTable.attach(sys.argv[1])
slot = int(sys.argv[2])
print(t.generation, t.get(slot), flush=True)
sys.stdin.readline()
print(t.get(slot), t.get(slot + 1), flush=True)
t.close()
"""


def test_another_process_sees_the_bump(table: VersionTable) -> None:
    table.bump(7)
    child = _child(READER, table.path, "7")
    try:
        assert child.stdout is not None and child.stdin is not None
        generation, before = map(int, child.stdout.readline().split())
        assert (generation, before) == (table.generation, 1)
        table.bump(7)
        table.bump_all()
        child.stdin.write("go\n")
        child.stdin.flush()
        after, neighbour = map(int, child.stdout.readline().split())
        assert (after, neighbour) == (3, 1)
        _, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    # the reader's exit must not have removed the owner's segment
    assert Path(table.path).exists()
