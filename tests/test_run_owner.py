"""One supervisor owns a run: a second claim is refused with the owner's PID, and the
claim ends with its holder, however the holder ends."""

from __future__ import annotations

import os

import pytest

from runtime.supervise.supervisor import OWNER_LOCK, RunError, RunOwner


def test_a_second_claim_is_refused_naming_the_owner(tmp_path):
    first = RunOwner.claim(tmp_path, "r1")
    with pytest.raises(RunError) as refused:
        RunOwner.claim(tmp_path, "r1")
    assert str(refused.value) == (
        f"run r1 is already supervised by pid {os.getpid()}; wait for it or `runtime stop` it"
    )
    first.release()
    RunOwner.claim(tmp_path, "r1").release()  # free again


def test_the_claim_ends_with_the_process_that_held_it(tmp_path):
    child = os.fork()
    if child == 0:  # claims, then dies without releasing anything
        try:
            RunOwner.claim(tmp_path, "r1")
        finally:
            os._exit(0)
    assert os.waitpid(child, 0)[1] == 0
    assert (tmp_path / OWNER_LOCK).read_text() == f"{child}\n"
    RunOwner.claim(tmp_path, "r1").release()


def test_a_passed_down_claim_is_kept_by_the_child(tmp_path):
    owner = RunOwner.claim(tmp_path, "r1")
    (holding, held), (go, told) = os.pipe(), os.pipe()
    child = os.fork()
    if child == 0:  # the detached supervisor: keeps the inherited lock until told to go
        try:
            RunOwner.inherited(owner.fd, tmp_path, "r1").record(os.getpid())
            os.write(held, b"1")
            os.read(go, 1)
        finally:
            os._exit(0)
    assert os.read(holding, 1) == b"1"
    owner.release()  # the launcher exits: its copy goes, the child's holds
    with pytest.raises(RunError, match=f"already supervised by pid {child};"):
        RunOwner.claim(tmp_path, "r1")
    os.write(told, b"1")
    assert os.waitpid(child, 0)[1] == 0
    RunOwner.claim(tmp_path, "r1").release()


def test_a_descriptor_that_is_not_the_runs_lock_is_refused(tmp_path):
    RunOwner.claim(tmp_path, "r1").release()
    other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(RunError, match="is not this run's lock"):
            RunOwner.inherited(other, tmp_path, "r1")
    finally:
        os.close(other)


def test_a_run_folder_that_is_gone_is_one_line(tmp_path):
    with pytest.raises(RunError, match=r"run r1: cannot take its lock in .*missing \(No such file"):
        RunOwner.claim(tmp_path / "missing", "r1")
