"""CRIU's answers kept across runs are believed only while everything that decided them is
unchanged, only from a file of the caller's own, and never at the cost of a traceback."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tracker.criu.facts_cache import CHANGE_MARGIN_NS, REFRESH_VARIABLE, CriuFacts, FactsCache

FACTS = CriuFacts(version=(4, 2, 1), features={"pidfd_store": True, "tcp_half_closed": False},
                  libraries={"libbpf": False}, loaded=())


@pytest.fixture
def criu(tmp_path) -> tuple[str, str]:
    """A CRIU-like executable and a library its run loads, both real files."""
    binary, library = tmp_path / "bin" / "criu", tmp_path / "lib" / "libcriu.so"
    for path in (binary, library):
        path.parent.mkdir()
        path.write_bytes(b"\x7fELF")
    binary.chmod(0o755)
    return str(binary), str(library)


def kept(cache: FactsCache, criu_path: str, facts: CriuFacts) -> Path | None:
    """Store as CRIU asked after the files' last change."""
    return cache.store(criu_path, facts, time.time_ns() + CHANGE_MARGIN_NS)


def later(path: str) -> None:
    """A real change of the file: its times move on, as `touch` or a reinstall does."""
    info = os.stat(path)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))


def test_facts_are_believed_while_nothing_they_depend_on_changes(tmp_path, criu):
    binary, library = criu
    facts = CriuFacts(FACTS.version, FACTS.features, FACTS.libraries, loaded=(library,))
    cache = FactsCache(tmp_path / "cache")
    entry = kept(cache, binary, facts)
    assert entry is not None and entry.parent == tmp_path / "cache"
    assert cache.load(binary) == facts
    assert oct(entry.stat().st_mode & 0o777) == oct(0o600)
    assert oct(entry.parent.stat().st_mode & 0o777) == oct(0o700)


@pytest.mark.parametrize("changed", ["binary", "library"])
def test_a_change_of_the_binary_or_a_library_it_loads_is_not_believed(tmp_path, criu, changed):
    binary, library = criu
    cache = FactsCache(tmp_path / "cache")
    kept(cache, binary, CriuFacts(FACTS.version, FACTS.features, FACTS.libraries, (library,)))
    later(binary if changed == "binary" else library)
    assert cache.load(binary) is None


def test_a_copy_at_another_path_has_no_facts_of_its_own(tmp_path, criu):
    binary, _ = criu
    cache = FactsCache(tmp_path / "cache")
    kept(cache, binary, FACTS)
    copy = tmp_path / "copy-of-criu"
    shutil.copy2(binary, copy)
    assert cache.load(binary) == FACTS
    assert cache.load(str(copy)) is None


def test_a_search_path_or_refresh_asked_for_is_not_believed(tmp_path, criu, monkeypatch):
    binary, _ = criu
    cache = FactsCache(tmp_path / "cache")
    kept(cache, binary, FACTS)
    monkeypatch.setenv(REFRESH_VARIABLE, "1")
    assert cache.load(binary) is None
    monkeypatch.delenv(REFRESH_VARIABLE)
    assert cache.load(binary) == FACTS
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ.get('PATH', '')}")
    assert cache.load(binary) is None


def test_facts_asked_while_a_file_changed_are_not_kept(tmp_path, criu):
    binary, _ = criu
    asked_before_the_change = time.time_ns() - CHANGE_MARGIN_NS
    later(binary)
    cache = FactsCache(tmp_path / "cache")
    assert cache.store(binary, FACTS, asked_before_the_change) is None
    assert cache.load(binary) is None


@pytest.mark.parametrize("content", [b"", b"{not json", b"[]", b'{"schema": 3}',
                                     b'{"schema": "crwatch.criu-facts/1", "facts": {"version": '
                                     b'"4.2.1"}}', b"\xff\xfe"])
def test_a_corrupt_file_is_ignored_and_replaced(tmp_path, criu, content):
    binary, _ = criu
    cache = FactsCache(tmp_path / "cache")
    entry = kept(cache, binary, FACTS)
    entry.write_bytes(content)
    assert cache.load(binary) is None
    kept(cache, binary, FACTS)
    assert cache.load(binary) == FACTS


def test_a_file_others_may_write_or_a_link_is_not_believed(tmp_path, criu):
    binary, _ = criu
    cache = FactsCache(tmp_path / "cache")
    entry = kept(cache, binary, FACTS)
    entry.chmod(0o620)
    assert cache.load(binary) is None
    entry.chmod(0o600)
    moved = entry.with_name("elsewhere.json")
    entry.rename(moved)
    entry.symlink_to(moved)
    assert cache.load(binary) is None


def test_a_directory_others_may_write_is_neither_read_nor_written(tmp_path, criu):
    binary, _ = criu
    cache = FactsCache(tmp_path / "cache")
    kept(cache, binary, FACTS)
    (tmp_path / "cache").chmod(0o777)
    assert cache.load(binary) is None
    assert kept(cache, binary, FACTS) is None


@pytest.mark.root
def test_a_file_owned_by_another_user_is_not_believed(tmp_path, criu):
    binary, _ = criu
    cache = FactsCache(tmp_path / "cache")
    entry = kept(cache, binary, FACTS)
    os.chown(entry, 65534, 65534)
    assert cache.load(binary) is None


def test_no_place_of_its_own_keeps_nothing(criu, monkeypatch):
    binary, _ = criu
    if os.geteuid() == 0:
        assert FactsCache.default().directory == Path("/run/crwatch")
        return
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    cache = FactsCache.default()
    assert cache.directory is None
    assert kept(cache, binary, FACTS) is None and cache.load(binary) is None
