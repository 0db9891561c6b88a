"""The mutation check's record: which breaks tests/run checks again, and which it may trust.

tests/run checks only the breaks whose fingerprint (entry, broken file, test files, shared test
code) is not in tests/mutations.verified, plus the day's slice of the others; these tests pin what
makes a break due again and what a run records.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import mutations
from tests.mutations import Break


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny tree with two modules, two test files and a shared helper, the record beside them."""
    (tmp_path / "server").mkdir()
    (tmp_path / "tests/support").mkdir(parents=True)
    (tmp_path / "server/a.py").write_text("A = 1\n")
    (tmp_path / "server/b.py").write_text("B = 2\n")
    (tmp_path / "tests/test_a.py").write_text("def test_a(): ...\n")
    (tmp_path / "tests/test_b.py").write_text("def test_b(): ...\n")
    (tmp_path / "tests/support/helper.py").write_text("HELP = 1\n")
    monkeypatch.setattr(mutations, "ROOT", tmp_path)
    monkeypatch.setattr(mutations, "RECORD", tmp_path / "tests/mutations.verified")
    return tmp_path


BREAK_A = Break("a is two", "server/a.py", "A = 1", "A = 2", ("tests/test_a.py::test_a",))
BREAK_B = Break("b is three", "server/b.py", "B = 2", "B = 3", ("tests/test_b.py::test_b",))


def due(breaks: list[Break], root: Path) -> set[str]:
    """The names tests/run would check, leaving the day's slice aside."""
    unverified, _ = mutations.due_breaks(breaks, mutations.read_record(), mutations.fingerprints(breaks, root), 0, 0)
    return {b.name for b in unverified}


def record_caught(breaks: list[Break], root: Path, missed: frozenset[str] = frozenset()) -> None:
    """A run over `breaks` that caught all but `missed`."""
    names = {b.name for b in breaks}
    mutations.write_record(mutations.fingerprints(breaks, root), names - missed, set(missed))


def test_every_break_is_due_before_any_was_caught(repo: Path) -> None:
    assert due([BREAK_A, BREAK_B], repo) == {"a is two", "b is three"}


def test_a_caught_break_is_not_due_while_nothing_of_it_changes(repo: Path) -> None:
    record_caught([BREAK_A, BREAK_B], repo)
    assert due([BREAK_A, BREAK_B], repo) == set()


def test_a_change_to_the_broken_file_makes_only_its_breaks_due(repo: Path) -> None:
    record_caught([BREAK_A, BREAK_B], repo)
    (repo / "server/a.py").write_text("A = 1\nMORE = 0\n")
    assert due([BREAK_A, BREAK_B], repo) == {"a is two"}


def test_a_change_to_a_test_file_makes_its_breaks_due(repo: Path) -> None:
    record_caught([BREAK_A, BREAK_B], repo)
    (repo / "tests/test_b.py").write_text("def test_b(): assert True\n")
    assert due([BREAK_A, BREAK_B], repo) == {"b is three"}


def test_a_change_to_shared_test_code_makes_every_break_due(repo: Path) -> None:
    record_caught([BREAK_A, BREAK_B], repo)
    (repo / "tests/support/helper.py").write_text("HELP = 2\n")
    assert due([BREAK_A, BREAK_B], repo) == {"a is two", "b is three"}


def test_a_changed_entry_is_due(repo: Path) -> None:
    record_caught([BREAK_A, BREAK_B], repo)
    changed = Break(BREAK_A.name, BREAK_A.path, BREAK_A.old, "A = 3", BREAK_A.tests)
    assert due([changed, BREAK_B], repo) == {"a is two"}


def test_a_missed_break_is_forgotten_and_due_again(repo: Path) -> None:
    record_caught([BREAK_A, BREAK_B], repo)
    record_caught([BREAK_A, BREAK_B], repo, missed=frozenset({"a is two"}))
    assert due([BREAK_A, BREAK_B], repo) == {"a is two"}


def test_a_break_dropped_from_the_list_leaves_the_record(repo: Path) -> None:
    record_caught([BREAK_A, BREAK_B], repo)
    record_caught([BREAK_B], repo)
    assert set(mutations.read_record()) == {"b is three"}


def recorded(count: int, start: int = 0) -> list[Break]:
    """`count` breaks, all as recorded."""
    return [Break(f"break {index}", "server/a.py", "A", "B", ()) for index in range(start, start + count)]


def todays(breaks: list[Break], day: int, slices: int, due: frozenset[str] = frozenset()) -> set[str]:
    """The names in the day's slice of `breaks`, every one recorded but those `due`."""
    current = {b.name: "now" for b in breaks}
    record = {b.name: "now" for b in breaks if b.name not in due}
    return {b.name for b in mutations.due_breaks(breaks, record, current, slices, day)[1]}


def test_day_after_day_the_slices_check_every_recorded_break_once() -> None:
    breaks = recorded(50)
    days = [todays(breaks, day, 5) for day in range(1000, 1005)]

    assert set().union(*days) == {b.name for b in breaks}
    assert sum(len(day) for day in days) == len(breaks)  # each once


def test_a_break_keeps_its_day_when_another_is_added() -> None:
    breaks = recorded(50)
    before = {day: todays(breaks, day, 5) for day in range(5)}
    after = {day: todays([*recorded(1, start=50), *breaks], day, 5) for day in range(5)}

    assert all(before[day] <= after[day] for day in range(5))


def test_a_break_keeps_its_day_when_others_fall_due() -> None:
    breaks = recorded(50)
    due = frozenset(f"break {index}" for index in range(12))  # their files changed: checked at once
    before = {day: todays(breaks, day, 5) for day in range(5)}
    after = {day: todays(breaks, day, 5, due) for day in range(5)}

    assert all(after[day] == before[day] - due for day in range(5))


def test_a_dry_run_names_the_due_breaks_and_records_nothing(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(mutations, "BREAKS", [BREAK_A, BREAK_B])
    record_caught([BREAK_B], repo)
    before = mutations.RECORD.read_text()

    assert mutations.main(["--unverified", "--dry-run"]) == 0

    assert capsys.readouterr().out.splitlines()[-1] == "a is two"
    assert mutations.RECORD.read_text() == before


def test_a_run_records_the_breaks_it_caught_and_not_those_it_missed(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mutations, "BREAKS", [BREAK_A, BREAK_B])
    monkeypatch.setattr(mutations, "check", lambda _repo, broken: broken is not BREAK_A)

    assert mutations.main(["--after-suite", "--jobs", "1"]) == 1

    assert set(mutations.read_record()) == {"b is three"}


def test_a_list_with_a_name_used_twice_is_refused(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    twin = Break(BREAK_A.name, BREAK_B.path, BREAK_B.old, BREAK_B.new, BREAK_B.tests)
    monkeypatch.setattr(mutations, "BREAKS", [BREAK_A, twin])

    assert mutations.main(["--after-suite"]) == 2


def test_a_list_whose_test_is_no_file_is_refused(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    in_a_folder = Break("a in a folder", BREAK_A.path, BREAK_A.old, BREAK_A.new, ("tests/support::test_a",))
    monkeypatch.setattr(mutations, "BREAKS", [in_a_folder])

    assert mutations.main(["--after-suite"]) == 2
