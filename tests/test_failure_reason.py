"""The reason a failed run records is its first real cause, read from the files a run
leaves: torchrun's failure report and the error file each rank writes when it raises."""

from __future__ import annotations

import os
from collections import namedtuple

import pytest

from runtime.supervise import supervisor
from runtime.supervise.supervisor import failure_reason

SIGNALS = {-9: "SIGKILL", -11: "SIGSEGV", -15: "SIGTERM", -6: "SIGABRT"}


def torchrun_report(run_dir, *ranks: tuple[int, int]) -> None:
    """torchrun's log after a failure, as torch 2.13 writes it: (rank, exit code) pairs,
    the first one being the root cause torchrun observed."""
    entries = []
    for i, (rank, code) in enumerate(ranks):
        what = (
            f"Signal {-code} ({SIGNALS[code]}) received by PID {100 + rank}"
            if code < 0
            else "To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html"
        )
        sig = f"  ({SIGNALS[code]})" if code < 0 else ""
        entries.append(
            f"[{i}]:\n  time      : 2026-12-01_14:48:47\n  host      : localhost\n"
            f"  rank      : {rank} (local_rank: {rank})\n  exitcode  : {code} (pid: {100 + rank}){sig}\n"
            f"  error_file: <N/A>\n  traceback : {what}\n"
        )
    root, others = entries[0], entries[1:]
    text = (
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
        "=======================================================\nruntime.worker FAILED\n"
        "-------------------------------------------------------\nFailures:\n"
        + ("".join(others) or "  <NO_OTHER_FAILURES>\n")
        + "-------------------------------------------------------\nRoot Cause (first observed failure):\n"
        + root
        + "=======================================================\n"
    )
    (run_dir / "torchrun.log").write_text(text)


def rank_error(run_dir, rank: int, line: str, at_ns: int) -> None:
    """An error file as a worker writes it (its time: when the exception was caught)."""
    path = run_dir / f"error-rank{rank}.txt"
    path.write_text(line + "\n\n" + line + "\n\nTraceback (most recent call last):\n  ...\n")
    os.utime(path, ns=(at_ns, at_ns))


T = 1_764_600_000 * 10**9  # a moment in 2025, in ns


def test_an_exception_beats_the_segfault_that_followed_it(tmp_path):
    # What a rank that raised leaves when it then crashes on its way out: torchrun reports
    # the signal, the rank's own file holds the real error.
    torchrun_report(tmp_path, (0, -11), (1, -15))
    rank_error(tmp_path, 0, "rank 0: ValueError: the batch does not split into 3 micro-batches", T)
    reason = failure_reason(tmp_path, 1, world_size=2)
    assert reason == "rank 0: ValueError: the batch does not split into 3 micro-batches"


def test_the_first_exception_wins_whatever_the_rank(tmp_path):
    torchrun_report(tmp_path, (0, 1), (1, -11))
    rank_error(tmp_path, 0, "rank 0: RuntimeError: Connection closed by peer", T + 3_000_000)
    rank_error(tmp_path, 1, "rank 1: RuntimeError: CUDA out of memory", T)
    assert failure_reason(tmp_path, 1, world_size=2) == "rank 1: RuntimeError: CUDA out of memory"


def test_a_rank_killed_without_a_word_is_the_cause_of_its_peers_errors(tmp_path):
    torchrun_report(tmp_path, (1, -9), (0, -15))
    rank_error(tmp_path, 0, "rank 0: RuntimeError: Read error: Connection reset by peer", T)
    assert failure_reason(tmp_path, 1, world_size=2) == "rank 1: Signal 9 (SIGKILL) received by PID 101"


def test_a_hang_names_the_rank_that_stopped_answering(tmp_path):
    # torchrun's SIGTERM did not end rank 1 (stopped), so torchrun killed it after its
    # shutdown time; rank 0 had timed out waiting for it.
    timeout = "rank 0: RuntimeError: [unbound_buffer.cc:78] Timed out waiting 5000ms for recv operation"
    torchrun_report(tmp_path, (0, 1), (1, -9))
    rank_error(tmp_path, 0, timeout, T)
    assert failure_reason(tmp_path, 1, world_size=2) == f"rank 1 stopped answering: {timeout}"


def test_a_hang_torn_down_by_the_supervisor_names_the_ranks_it_killed(tmp_path):
    timeout = "rank 2: RuntimeError: Timed out waiting 5000ms for send operation to complete"
    rank_error(tmp_path, 2, timeout, T)
    rank_error(tmp_path, 0, "rank 0: RuntimeError: Timed out waiting 5000ms for recv", T + 10**6)
    reason = failure_reason(tmp_path, 1, world_size=4, stuck={1, 3})
    assert reason == f"ranks 1, 3 stopped answering: {timeout}"


@pytest.mark.parametrize("content", ["", "\n", "   \n\n"])
def test_an_empty_error_file_is_reported_not_crashed_on(tmp_path, content):
    torchrun_report(tmp_path, (0, 1), (1, -15))
    (tmp_path / "error-rank0.txt").write_text(content)
    reason = failure_reason(tmp_path, 1, world_size=2)
    assert reason == "rank 0: failed, and its error could not be written (error-rank0.txt is empty)"


def test_an_empty_error_file_on_a_full_disk_says_the_disk_is_full(tmp_path, monkeypatch):
    (tmp_path / "torchrun.log").write_text("")  # torchrun could not write its report either
    (tmp_path / "error-rank0.txt").write_text("")
    (tmp_path / "error-rank1.txt").write_text("")
    full = namedtuple("statvfs", "f_bavail f_frsize")(0, 4096)
    monkeypatch.setattr(supervisor.os, "statvfs", lambda path: full)
    reason = failure_reason(tmp_path, 1, world_size=2)
    assert reason.startswith(f"out of disk space in {tmp_path.parent} (No space left on device): rank ")
    assert "could not be written" in reason


@pytest.mark.parametrize(
    "error",
    [
        "rank 1: OSError: [Errno 28] No space left on device: '/runs/r/checkpoints/step-000020/__1_0.distcp'",
        "rank 0: OperationalError: database or disk is full",
    ],
)
def test_a_full_disk_is_named_as_the_reason(tmp_path, error):
    torchrun_report(tmp_path, (0, 1), (1, 1))
    rank_error(tmp_path, int(error[5]), error, T)
    reason = failure_reason(tmp_path, 1, world_size=2)
    assert reason == f"out of disk space in {tmp_path.parent} (No space left on device): {error}"


def test_a_stale_report_without_errors_gives_torchruns_exit(tmp_path):
    (tmp_path / "torchrun.log").write_text("some line\nERROR: rendezvous failed\n")
    reason = failure_reason(tmp_path, 1, world_size=2)
    assert reason == "torchrun exited with code 1: some line | ERROR: rendezvous failed"


def test_torchrun_killed_by_a_signal(tmp_path):
    assert failure_reason(tmp_path, -9, world_size=2) == "torchrun was killed by SIGKILL"


def test_a_disk_with_room_is_not_called_full(tmp_path):
    (tmp_path / "error-rank0.txt").write_text("")
    reason = failure_reason(tmp_path, 1, world_size=1)
    assert "disk" not in reason and "could not be written" in reason
