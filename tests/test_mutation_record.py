"""The mutation check's record: which breaks tests/run checks again, and which it may trust.

tests/run checks only the breaks whose fingerprint (entry, broken file, test files) is not in
tests/mutations.verified, plus a daily sample; these tests pin what makes a break due again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import mutations
from tests.mutations import Break


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny tree with two modules and two test files, the record beside them."""
    (tmp_path / "server").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "server/a.py").write_text("A = 1\n")
    (tmp_path / "server/b.py").write_text("B = 2\n")
    (tmp_path / "tests/test_a.py").write_text("def test_a(): ...\n")
    (tmp_path / "tests/test_b.py").write_text("def test_b(): ...\n")
    monkeypatch.setattr(mutations, "ROOT", tmp_path)
    monkeypatch.setattr(mutations, "RECORD", tmp_path / "tests/mutations.verified")
    return tmp_path


BREAK_A = Break("a is two", "server/a.py", "A = 1", "A = 2", ("tests/test_a.py::test_a",))
BREAK_B = Break("b is three", "server/b.py", "B = 2", "B = 3", ("tests/test_b.py::test_b",))


def due(breaks: list[Break]) -> set[str]:
    """The names tests/run would check (leaving the sample aside)."""
    record = mutations.read_record()
    current = mutations.fingerprints(breaks)
    return {b.name for b in breaks if record.get(b.name) != current[b.name]}


def record_caught(breaks: list[Break], missed: frozenset[str] = frozenset()) -> None:
    """A run over `breaks` that caught all but `missed`."""
    names = {b.name for b in breaks}
    mutations.write_record(mutations.fingerprints(breaks), names - missed, set(missed))


def test_every_break_is_due_before_any_was_caught(repo: Path) -> None:
    assert due([BREAK_A, BREAK_B]) == {"a is two", "b is three"}


def test_a_caught_break_is_not_due_while_nothing_of_it_changes(repo: Path) -> None:
    record_caught([BREAK_A, BREAK_B])
    assert due([BREAK_A, BREAK_B]) == set()


def test_a_change_to_the_broken_file_makes_only_its_breaks_due(repo: Path) -> None:
    record_caught([BREAK_A, BREAK_B])
    (repo / "server/a.py").write_text("A = 1\nMORE = 0\n")
    assert due([BREAK_A, BREAK_B]) == {"a is two"}


def test_a_change_to_a_test_file_makes_its_breaks_due(repo: Path) -> None:
    record_caught([BREAK_A, BREAK_B])
    (repo / "tests/test_b.py").write_text("def test_b(): assert True\n")
    assert due([BREAK_A, BREAK_B]) == {"b is three"}


def test_a_changed_entry_is_due(repo: Path) -> None:
    record_caught([BREAK_A, BREAK_B])
    changed = Break(BREAK_A.name, BREAK_A.path, BREAK_A.old, "A = 3", BREAK_A.tests)
    assert due([changed, BREAK_B]) == {"a is two"}


def test_a_missed_break_is_forgotten_and_due_again(repo: Path) -> None:
    record_caught([BREAK_A, BREAK_B])
    record_caught([BREAK_A, BREAK_B], missed=frozenset({"a is two"}))
    assert due([BREAK_A, BREAK_B]) == {"a is two"}


def test_a_break_dropped_from_the_list_leaves_the_record(repo: Path) -> None:
    record_caught([BREAK_A, BREAK_B])
    record_caught([BREAK_B])
    assert set(mutations.read_record()) == {"b is three"}
