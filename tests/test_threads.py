"""The CPU thread policy: idle cores measured from /proc/stat, environment overrides."""

from pathlib import Path

import pytest

from dao_core import threads


def stat_file(path: Path, jiffies: dict[int, tuple[int, int]]) -> None:
    """A /proc/stat with per-core (busy, idle) jiffies."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    for core, (busy, idle) in jiffies.items():
        lines.append(f"cpu{core} {busy} 0 0 {idle} 0 0 0 0 0 0")
    path.write_text("\n".join(lines) + "\nintr 0\n")


BEFORE = {0: (100, 100), 1: (100, 100)}


@pytest.fixture
def fake_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Two usable cores; core 1 busy for the whole probe, core 0 idle."""
    path = tmp_path / "stat"
    monkeypatch.setattr(threads, "PROC_STAT", path)
    monkeypatch.setattr(threads, "usable_cores", lambda: [0, 1])
    # The probe's sleep is when the other process runs: core 1 busy, core 0 almost idle.
    after = {0: (101, 199), 1: (200, 100)}
    monkeypatch.setattr(threads.time, "sleep", lambda s: stat_file(path, after))
    monkeypatch.delenv("DAO_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    stat_file(path, BEFORE)
    return path


def test_a_busy_core_is_not_used(fake_machine: Path) -> None:
    assert threads.idle_cores() == pytest.approx(0.99)
    stat_file(fake_machine, BEFORE)
    assert threads.choose_threads() == 1


def test_idle_cores_are_all_used(fake_machine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    idle = {0: (101, 199), 1: (102, 198)}
    monkeypatch.setattr(threads.time, "sleep", lambda s: stat_file(fake_machine, idle))
    assert threads.choose_threads() == 2


def test_environment_overrides_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAO_NUM_THREADS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.choose_threads() == 3
    monkeypatch.delenv("DAO_NUM_THREADS")
    assert threads.choose_threads() == 1


def test_no_proc_stat_means_one_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "PROC_STAT", tmp_path / "missing")
    monkeypatch.delenv("DAO_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.idle_cores(probe_s=0.0) is None
    assert threads.choose_threads() == 1
