"""One run per run folder, and no orphans: a second ``therasim run`` on the same folder is
refused naming the holder's pid (or waits with ``--wait``), and a killed parent's worker
processes exit (issue 12, items 18 and 19)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml
from factories import study_file

from therasim.errors import RunLocked
from therasim.simulations.runlock import LOCK_NAME, run_lock


def _holder(folder: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding ``folder``'s lock for ``seconds``, once it has printed 'held'."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path;"
            "from therasim.simulations.runlock import run_lock\n"
            "with run_lock(Path(sys.argv[1])):\n"
            "    print('held', flush=True); time.sleep(float(sys.argv[2]))",
            str(folder),
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_held_run_folder_is_refused_naming_the_holder(tmp_path: Path) -> None:
    holder = _holder(tmp_path, 30)
    try:
        with pytest.raises(RunLocked, match=f"pid {holder.pid}"), run_lock(tmp_path):
            pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(tmp_path):  # the kernel released the dead holder's lock
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_wait_blocks_until_the_holder_is_done(tmp_path: Path) -> None:
    holder = _holder(tmp_path, 1.5)
    started = time.monotonic()
    with run_lock(tmp_path, wait=True):
        waited = time.monotonic() - started
    holder.wait()
    assert waited >= 0.5


def test_cli_run_on_a_busy_folder_exits_1_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from therasim.cli import main

    study = study_file(tmp_path, id="busy", max_turns=2)
    (tmp_path / "run").mkdir()
    with run_lock(tmp_path / "run"):
        assert main(["run", str(study), "--no-report"]) == 1
    captured = capsys.readouterr()
    out = " ".join((captured.out + captured.err).split())
    assert f"pid {os.getpid()}" in out and "--wait" in out and "Traceback" not in out


def _children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find the workers")
def test_workers_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "id": "orphans",
                "subjects": {"a": "scripted:adherent", "b": "scripted:safety-reflex"},
                "personas": {"globs": ["pe-*", "cbt-*"]},
                "max_turns": 30,
                "repeats": 3,
                "questionnaires": False,
                "cache": False,
                "processes": 2,
                "output": str(tmp_path / "run"),
            }
        )
    )
    env = {**os.environ, "THERASIM_HOME": str(tmp_path / "home")}
    parent = subprocess.Popen(
        [sys.executable, "-m", "therasim", "run", str(study), "--no-judge", "--no-report"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: set[int] = set()
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.2)
        workers = _children(parent.pid)
    assert len(workers) >= 2, "the study should have started two worker processes"
    alive = _kill_and_survivors(parent, workers)
    assert not alive, f"workers {alive} outlived their parent"


def _kill_and_survivors(
    parent: subprocess.Popen[str] | subprocess.Popen[bytes], workers: Iterable[int]
) -> list[int]:
    """Kill ``parent`` with SIGKILL and wait up to 10 s for ``workers`` to end; the ones still
    alive then (killed too, so no test leaves them behind)."""
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [w for w in workers if _alive(w)]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    return alive


_IDLE_POOL = """
import concurrent.futures, multiprocessing, os, sys, time
from therasim.simulations.runner import _init_shard
ctx = multiprocessing.get_context("fork")
pool = concurrent.futures.ProcessPoolExecutor(
    max_workers=2, mp_context=ctx, initializer=_init_shard, initargs=(None, os.getpid())
)
pool.submit(os.getpid).result()  # the workers are up, then wait on the pool's queue
print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find the workers")
def test_an_idle_worker_exits_when_the_parent_is_killed() -> None:
    """A worker waiting for its sessions (the parent killed before it handed them over) must
    not wait for ever: the watch on the parent starts when the worker does."""
    parent = subprocess.Popen([sys.executable, "-c", _IDLE_POOL], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    workers = [int(w) for w in parent.stdout.readline().split()]
    assert len(workers) == 2
    alive = _kill_and_survivors(parent, workers)
    assert not alive, f"idle workers {alive} outlived their parent"
