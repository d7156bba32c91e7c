"""The job channel: bounded queue, addressed replies, one reply box per process."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import gc
import json
import logging
import mmap
import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import threading
import time

import hypothesis
import pytest
import hypothesis.strategies as st

from opsevent import Status, parse_socket
from workers.channel import job, jobqueue, overflow, replies
from workers.channel.jobqueue import JobQueue
from workers.channel.replies import Replier, ReplyBox
from workers.channel.sender import JobSender

from helpers import ANOTHER_UID, as_another_user

FORK = multiprocessing.get_context("fork")
SOCKET = parse_socket("rabbitmq:127.0.0.1/q")


def reply(replier, address, seq, statuses):
    """What the worker does at the end of a turn for one finished sync job."""
    replier.add(address, seq, statuses, time.monotonic() + 5)
    replier.flush()


def test_a_late_reply_to_a_timed_out_caller_is_discarded_not_read_by_the_next_caller():
    box, replier = ReplyBox(), Replier()
    box.expect(1)
    assert box.wait(1, time.monotonic() + 0.05) is None  # the caller gave up
    reply(replier, box.address, 1, (("confirmed", ""),))  # the worker answers late
    box.expect(2)
    reply(replier, box.address, 2, (("failed", "for seq 2"),))
    assert box.wait(2, time.monotonic() + 2) == (("failed", "for seq 2"),)
    assert box.discarded == 1


def test_threads_waiting_on_one_reply_box_each_get_their_own_reply():
    box, replier = ReplyBox(), Replier()
    got = {}
    for seq in range(1, 9):
        box.expect(seq)

    def wait(seq):
        got[seq] = box.wait(seq, time.monotonic() + 5)

    threads = [threading.Thread(target=wait, args=(seq,)) for seq in range(1, 9)]
    for t in threads:
        t.start()
    for seq in reversed(range(1, 9)):
        reply(replier, box.address, seq, (("confirmed", f"for seq {seq}"),))
    for t in threads:
        t.join(10)
    assert got == {seq: (("confirmed", f"for seq {seq}"),) for seq in range(1, 9)}
    assert box._sleepers == 0  # every thread that slept was woken or timed out, and counted out


def test_a_raise_on_a_full_queue_fails_at_once_in_both_modes():
    jobs = JobQueue(FORK, maxsize=2)
    sender = JobSender(jobs)
    assert sender.submit("E", (SOCKET,), b"E\n", False, 1.0) == ((Status.QUEUED, ""),)
    assert sender.submit("E", (SOCKET,), b"E\n", False, 1.0) == ((Status.QUEUED, ""),)
    for sync in (False, True):
        started = time.monotonic()
        (status, reason), = sender.submit("E", (SOCKET,), b"E\n", sync, 5.0)
        assert status is Status.QUEUE_FULL and "full" in reason
        assert time.monotonic() - started < 0.5
    assert sender.queue_full == 2
    jobs.close()


def test_the_worker_end_reads_every_job_from_several_processes_and_frees_their_slots():
    jobs = JobQueue(FORK, maxsize=50)

    def produce(rank):
        sender = JobSender(jobs)
        for i in range(40):
            while sender.submit("E", (SOCKET,), b"%d-%d" % (rank, i), False, 1.0)[0][0] is not Status.QUEUED:
                time.sleep(0.001)  # full: the reader frees slots as it reads

    producers = [FORK.Process(target=produce, args=(rank,)) for rank in range(3)]
    for p in producers:
        p.start()
    jobs.attach_reader()
    bodies, deadline = [], time.monotonic() + 20
    while len(bodies) < 120 and time.monotonic() < deadline:
        bodies += [job.decode(payload)[5] for payload in jobs.receive(1000)]
        time.sleep(0.001)
    for p in producers:
        p.join(10)
    assert sorted(bodies) == sorted(b"%d-%d" % (r, i) for r in range(3) for i in range(40))
    for rank in range(3):  # each producer's jobs arrive in its order
        mine = [b for b in bodies if b.startswith(b"%d-" % rank)]
        assert mine == [b"%d-%d" % (rank, i) for i in range(40)]
    jobs.close()


def test_a_forked_child_makes_its_own_reply_box_instead_of_reading_the_parents():
    jobs = JobQueue(FORK, maxsize=10)
    sender = JobSender(jobs)
    parent_box = sender._reply_box()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its box's address and exit without cleanup
        box = sender._reply_box()
        os.write(w, box.address if box is not parent_box and box.pid == os.getpid() else b"same")
        os._exit(0)
    os.waitpid(pid, 0)
    child_address = os.read(r, 200)
    assert child_address not in (b"same", parent_box.address)
    jobs.close()


def test_a_burst_beyond_the_pipe_overflows_into_the_buffer_and_arrives_in_order():
    jobs = JobQueue(FORK, maxsize=10**6)
    sender = JobSender(jobs)
    n = jobs.capacity // 1000 * 2  # twice what the pipe holds
    bodies = [b"%06d" % i + b"x" * 1000 for i in range(n)]
    for body in bodies:
        assert sender.submit("E", (SOCKET,), body, False, 1.0)[0][0] is Status.QUEUED
    assert jobs.unsent() > 0  # the rest waits in this process's buffer
    jobs.attach_reader()
    got, deadline = [], time.monotonic() + 20
    while len(got) < n and time.monotonic() < deadline:
        got += [job.decode(payload)[5] for payload in jobs.receive(1000)]
    assert got == bodies and jobs.flush(1.0) == 0
    jobs.close()


def test_a_long_overflow_buffer_holds_no_object_per_job_for_the_garbage_collector_to_walk():
    # The buffer is the application's process's memory: its collections must not walk it.
    # Buffered jobs as lists were promoted and walked: a full collection of 50,000 of them
    # stopped a flooding bench front-end for 125-177 ms. The frames are copied into chunks.
    jobs = JobQueue(FORK, maxsize=10**6)
    n = jobs.capacity // 1000 + 2000  # beyond what the pipe holds
    gc.collect()
    tracked = len(gc.get_objects())
    for i in range(n):
        assert jobs.put([b"%06d" % i, b"x" * 1000 if i % 7 else b"y" * 10_000])  # some of several frames
    assert jobs.unsent() >= 1000
    assert len(gc.get_objects()) - tracked < 100  # the feeder thread and its few objects, not thousands
    jobs.attach_reader()
    assert drain_count(jobs, n) == n and jobs.flush(1.0) == 0
    jobs.close()


def test_a_raise_into_the_buffer_copies_into_memory_the_feeder_faulted_in_ahead_of_it():
    # A page fault cost a raise 4-40 us on this project's virtual machine, in one raise of
    # twenty while the buffer grew. The feeder maps the next chunks populated, off the GIL.
    jobs = JobQueue(FORK, maxsize=10**6)
    while not jobs.unsent():  # fill the pipe: what follows is buffered, and nobody reads
        assert jobs.put([b"x" * 1000])
    buffer = jobs._here().overflow
    faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for i in range(20 * overflow.CHUNK // 1000):  # twenty chunks' worth, some pauses for the feeder
        assert jobs.put([b"%06d" % i, b"z" * 1000])
        if i % 100 == 99:
            time.sleep(0.005)
    faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults
    assert buffer.faulted == 0  # every chunk the raising thread needed was ready
    assert faults < 20 * overflow.CHUNK // mmap.PAGESIZE // 10  # not the 1,280 pages the chunks span
    jobs.attach_reader()
    assert drain_count(jobs, jobs.depth()) > 20 * overflow.CHUNK // 1000 and jobs.flush(2.0) == 0
    jobs.close()


def test_a_buffer_that_cannot_map_memory_ahead_says_so_and_still_delivers_every_job(monkeypatch, caplog):
    def no_descriptor(*_args):
        raise OSError(errno.EMFILE, "Too many open files")
    monkeypatch.setattr(os, "eventfd", no_descriptor)
    jobs = JobQueue(FORK, maxsize=10**6)
    n = jobs.capacity // 1000 + 500  # beyond what the pipe holds
    with caplog.at_level(logging.WARNING, logger="workers.channel.jobqueue"):
        for i in range(n):
            assert jobs.put([b"%06d" % i, b"x" * 1000])
    assert jobs.unsent() > 0
    assert "cannot map its memory ahead (Too many open files)" in caplog.text
    jobs.attach_reader()
    assert drain_count(jobs, n) == n and jobs.flush(2.0) == 0
    jobs.close()


def test_the_buffer_reuses_an_emptied_chunk_instead_of_mapping_a_new_one():
    buffer = overflow.OverflowBuffer()
    frame = overflow.HEADER.pack(100, 1, 0, 1) + b"p" * 100
    per_chunk = overflow.CHUNK // len(frame)
    for _round in range(3):
        for _ in range(3 * per_chunk):
            buffer.add(frame)
        while buffer.jobs:
            with buffer.front(4096)[0] as view:
                buffer.pop(view.nbytes, view.nbytes // len(frame))
    assert buffer.faulted == 3  # the first round's three; then the emptied two as spares, and the last in place
    assert buffer.needs_spares() == 0


def fill_and_report(jobs, buffered_at_least, then, report):
    """A front-end: put 1,000-byte jobs until some wait in its buffer, report (put, buffered), then *then*."""
    put = 0
    while jobs.unsent() < buffered_at_least:
        assert jobs.put([b"%06d" % put, b"x" * 1000])
        put += 1
    time.sleep(0.2)  # the feeder is stuck on a full pipe: the count is final
    report.send((put, jobs.unsent()))
    then()


def drain_count(jobs, expected, timeout=20.0) -> int:
    """Read jobs until *expected* came or *timeout* passed; how many came."""
    got, deadline = 0, time.monotonic() + timeout
    while got < expected and time.monotonic() < deadline:
        got += len(jobs.receive(1000))
    return got


def test_a_feeder_asleep_on_an_emptied_buffer_wakes_for_the_next_overflow_round_after_round():
    jobs = JobQueue(FORK, maxsize=10**6)
    jobs.attach_reader()
    for _round in range(3):
        put = 0
        while not jobs.unsent():  # the pipe is full: what follows waits in the buffer
            assert jobs.put([b"x" * 1000])
            put += 1
        for _ in range(5):  # more on a buffer that is not empty: the feeder is awake already
            assert jobs.put([b"y" * 1000])
        assert drain_count(jobs, put + 5, timeout=10.0) == put + 5
        deadline = time.monotonic() + 5
        while jobs.unsent() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert jobs.unsent() == 0  # the feeder emptied the buffer and sleeps until the next overflow
    assert jobs.depth() == 0
    jobs.close()


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(st.lists(st.integers(0, 3 * 4096), min_size=1, max_size=40))
def test_buffered_jobs_of_any_sizes_leave_in_batched_writes_whole_and_in_order_and_give_back_every_slot(sizes):
    jobs = JobQueue(FORK, maxsize=10**6)
    filler = b"f" * 4000
    while jobs.put([filler]) and not jobs.unsent():  # fill the pipe: what follows is buffered
        pass
    bodies = [b"%06d" % i + bytes([i % 251]) * size for i, size in enumerate(sizes)]
    for body in bodies:
        assert jobs.put([body])
    local = jobs._here()
    assert jobs.writers[local.entry + 2] == jobs.unsent()  # the writers' table: every buffered job's slot
    jobs.attach_reader()
    got, deadline = [], time.monotonic() + 20
    while len(got) < len(bodies) and time.monotonic() < deadline:
        got += [bytes(p) for p in jobs.receive(1000) if bytes(p) != filler]
    assert got == bodies and jobs.unsent() == 0
    assert jobs.writers[local.entry + 2] == 0 and jobs.depth() == 0
    assert jobs._slots.get_value() == jobs.maxsize
    jobs.close()


def test_a_big_job_whose_last_frame_waits_in_the_buffer_has_its_slot_counted_with_the_pipe_not_the_buffer():
    jobs = JobQueue(FORK, maxsize=10)
    fcntl.fcntl(jobs._write_fd, fcntl.F_SETPIPE_SZ, 4096)  # room for one whole frame
    body = b"b" * 5000  # two frames: the first fills the pipe, the second is buffered
    assert jobs.put([body])
    local = jobs._here()
    assert jobs.unsent() == 1
    assert jobs.writers[local.entry + 2] == 0  # its slot went into the pipe with its first frame
    jobs.attach_reader()
    got, deadline = [], time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        got = [bytes(p) for p in jobs.receive(10)]
    assert got == [body] and jobs.unsent() == 0
    assert jobs.writers[local.entry + 2] == 0 and jobs._slots.get_value() == jobs.maxsize
    jobs.close()


def test_a_front_end_killed_with_jobs_in_its_buffer_has_them_counted_as_lost_and_their_slots_freed():
    jobs = JobQueue(FORK, maxsize=10**6)
    recv, send = FORK.Pipe(False)
    child = FORK.Process(target=fill_and_report,
                         args=(jobs, 100, lambda: os.kill(os.getpid(), signal.SIGKILL), send))
    child.start()
    assert recv.poll(30)
    put, buffered = recv.recv()
    child.join(10)
    assert child.exitcode == -signal.SIGKILL and buffered >= 100
    assert jobs.depth() == put  # before: the dead process's buffered jobs still hold their slots
    jobs.attach_reader()
    assert jobs.reclaim_dead_writers() == buffered and jobs.lost_buffered() == buffered
    assert jobs.reclaim_dead_writers() == 0  # once only
    assert drain_count(jobs, put - buffered) == put - buffered
    assert jobs.depth() == 0 and jobs.receive(1000) == []
    assert jobs._slots.get_value() == jobs.maxsize  # every slot back, none twice
    jobs.close()


def test_a_live_front_end_keeps_its_slots_and_one_that_spooled_its_buffer_is_not_counted_twice():
    with tempfile.TemporaryDirectory() as spool:
        jobs = JobQueue(FORK, maxsize=10**6, spool_dir=spool)
        alive_recv, alive_send = FORK.Pipe(False)
        gone_recv, gone_send = FORK.Pipe(False)
        release = FORK.Event()
        alive = FORK.Process(target=fill_and_report, args=(jobs, 50, lambda: release.wait(30), alive_send))
        alive.start()
        assert alive_recv.poll(30)
        alive_put, alive_buffered = alive_recv.recv()
        # The pipe is full: every job of the second goes to its buffer, then to a spool file at exit.
        gone = FORK.Process(target=fill_and_report, args=(jobs, 50, jobs.spool_unsent, gone_send))
        gone.start()
        assert gone_recv.poll(30)
        gone_put, gone_buffered = gone_recv.recv()
        gone.join(10)
        assert gone.exitcode == 0 and gone_buffered == gone_put
        jobs.attach_reader()
        assert jobs.reclaim_dead_writers() == 0 and jobs.lost_buffered() == 0  # one alive, one handed over
        release.set()
        alive.join(10)  # exits without handing its buffer over (nothing read meanwhile: it is unchanged)
        assert alive.exitcode == 0
        assert jobs.reclaim_dead_writers() == alive_buffered
        expected = alive_put - alive_buffered + gone_put
        assert drain_count(jobs, expected) == expected and jobs.unspooled == gone_put
        assert jobs.depth() == 0 and jobs._slots.get_value() == jobs.maxsize
        jobs.close()


def buffer_many_chunks(jobs) -> tuple[int, list[bytes]]:
    """Fill the pipe, then buffer jobs spanning several of the buffer's chunks, some of
    several frames; return (jobs in the pipe, the buffered payloads in order)."""
    in_pipe = 0
    while not jobs.unsent():
        assert jobs.put([b"p%07d" % in_pipe, b"x" * 1000])
        in_pipe += 1
    in_pipe -= 1  # the last one was buffered
    buffered = [b"p%07d" % in_pipe + b"x" * 1000]
    while sum(map(len, buffered)) < 3 * overflow.CHUNK:
        i = len(buffered)
        buffered.append(b"b%07d" % i + (b"y" * 9000 if i % 50 == 0 else b"z" * (i % 1500)))
        assert jobs.put([buffered[-1]])
    time.sleep(0.1)  # nothing reads: the feeder's writes all find the pipe full
    assert jobs.unsent() == len(buffered)
    return in_pipe, buffered


def test_a_buffer_over_several_chunks_is_spooled_whole_and_read_back_after_the_pipe_in_order():
    with tempfile.TemporaryDirectory() as spool:
        jobs = JobQueue(FORK, maxsize=10**6, spool_dir=spool)
        in_pipe, buffered = buffer_many_chunks(jobs)
        assert jobs.spool_unsent() == len(buffered) and jobs.unsent() == 0
        jobs.attach_reader()
        got, deadline = [], time.monotonic() + 20
        while len(got) < in_pipe + len(buffered) and time.monotonic() < deadline:
            got += jobs.receive(1000)
        assert got[in_pipe:] == buffered and len(got) == in_pipe + len(buffered)
        assert jobs.depth() == 0 and jobs._slots.get_value() == jobs.maxsize
        jobs.close()


def test_a_discarded_buffer_over_several_chunks_gives_back_every_payload_in_order_and_its_slots():
    jobs = JobQueue(FORK, maxsize=10**6)
    in_pipe, buffered = buffer_many_chunks(jobs)
    assert jobs.discard_unsent() == buffered and jobs.unsent() == 0
    assert jobs.depth() == in_pipe  # only the pipe's jobs still hold slots
    jobs.close()


def test_a_big_job_crosses_the_pipe_in_several_frames_and_comes_back_whole():
    jobs = JobQueue(FORK, maxsize=10)
    sender = JobSender(jobs)
    body = bytes(range(256)) * 70  # 17,920 bytes: five frames
    assert sender.submit("E", (SOCKET,), body, False, 1.0)[0][0] is Status.QUEUED
    jobs.attach_reader()
    (payload,) = jobs.receive(10)
    assert job.decode(payload)[5] == body
    jobs.close()


# The raising thread's pipe write: libc's write called holding the GIL, and the
# fallback where libc's symbols cannot be found (plain os.write).
WRITES = [pytest.param(jobqueue._load_libc_write(), id="libc-holding-gil"),
          pytest.param(jobqueue._os_write, id="os-write-fallback")]


@pytest.fixture
def pipe():
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        with contextlib.suppress(OSError):
            os.close(fd)


@pytest.mark.parametrize("libc_write", WRITES)
def test_a_frame_written_holding_the_gil_arrives_whole_and_a_full_pipe_is_eagain_with_nothing_written(
        pipe, libc_write, monkeypatch):
    monkeypatch.setattr(jobqueue, "_libc_write", libc_write)
    read_fd, write_fd = pipe
    frame = bytes(range(256)) * 16  # PIPE_BUF bytes
    jobqueue.write_holding_gil(write_fd, frame)
    assert os.read(read_fd, 8192) == frame
    written = 0
    while True:  # fill the pipe
        try:
            jobqueue.write_holding_gil(write_fd, frame)
            written += len(frame)
        except BlockingIOError as exc:
            assert exc.errno == errno.EAGAIN
            break
    os.set_blocking(read_fd, False)
    got = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(read_fd, 1 << 20):
            got += chunk
    assert got == frame * (written // len(frame))  # whole frames only: the refused one left nothing


@pytest.mark.parametrize("libc_write", WRITES)
def test_a_write_to_a_closed_pipe_end_raises_the_errors_own_oserror(pipe, libc_write, monkeypatch):
    monkeypatch.setattr(jobqueue, "_libc_write", libc_write)
    read_fd, write_fd = pipe
    os.close(read_fd)
    with pytest.raises(OSError) as raised:
        jobqueue.write_holding_gil(write_fd, b"job")  # EPIPE (SIGPIPE is ignored by Python)
    assert raised.value.errno == errno.EPIPE
    os.close(write_fd)
    with pytest.raises(OSError) as raised:
        jobqueue.write_holding_gil(write_fd, b"job")
    assert raised.value.errno == errno.EBADF


def test_no_other_thread_runs_while_frames_are_written_holding_the_gil(pipe):
    # ctypes calls a PyDLL function without releasing the GIL (os.write releases it).
    assert jobqueue._load_libc_write()._flags_ & ctypes._FUNCFLAG_PYTHONAPI
    # A spinning thread counts only while it holds the GIL.  With a switch interval
    # of a second, it can run during the writes only if this thread lets go of it.
    read_fd, write_fd = pipe
    spins, stop = [0], threading.Event()

    def spin():
        while not stop.is_set():
            spins[0] += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    spinner = threading.Thread(target=spin, daemon=True)
    try:
        spinner.start()  # this thread has the GIL back only when it returns
        before = spins[0]
        for _ in range(1000):
            jobqueue.write_holding_gil(write_fd, b"frame")
        moved = spins[0] - before
    finally:
        stop.set()
        sys.setswitchinterval(old)
        spinner.join(5)
    assert moved == 0 and spins[0] > 0
    assert os.read(read_fd, 65536) == b"frame" * 1000


@pytest.mark.parametrize("sync, threads, expected", [
    (True, 3, "holding the GIL"),  # a sync raise, other threads could take the GIL: keep it
    (True, 0, "os.write"),         # nobody else to take it: the cheaper call
    (False, 3, "os.write"),        # an async raise does not wait for a reply: the cheaper call
    (False, 0, "os.write"),
])
def test_only_a_sync_raise_in_a_process_with_other_threads_writes_holding_the_gil(
        sync, threads, expected, monkeypatch):
    calls = []
    real_holding, real_os_write = jobqueue.write_holding_gil, os.write
    monkeypatch.setattr(jobqueue, "_other_threads", lambda: threads)
    monkeypatch.setattr(jobqueue, "write_holding_gil",
                        lambda fd, frame: calls.append("holding the GIL") or real_holding(fd, frame))
    monkeypatch.setattr(jobqueue.os, "write",
                        lambda fd, frame: calls.append("os.write") or real_os_write(fd, frame))
    jobs = JobQueue(FORK, maxsize=10)
    sender = JobSender(jobs)
    big = bytes(range(256)) * 70  # five frames
    # No worker answers: a sync raise times out after its put, which is what is watched here.
    want = Status.TIMEOUT if sync else Status.QUEUED
    assert sender.submit("E", (SOCKET,), b"small", sync, 0.05)[0][0] is want
    assert sender.submit("E", (SOCKET,), big, sync, 0.05)[0][0] is want
    monkeypatch.undo()
    assert calls == [expected] * 6  # one frame, then five
    jobs.attach_reader()
    assert [job.decode(payload)[5] for payload in jobs.receive(10)] == [b"small", big]
    jobs.close()


def test_jobs_the_worker_reads_ahead_free_their_slots_so_a_dying_worker_takes_no_capacity_with_it():
    jobs = JobQueue(FORK, maxsize=10)
    sender = JobSender(jobs)
    for i in range(10):
        assert sender.submit("E", (SOCKET,), b"%d" % i, False, 1.0)[0][0] is Status.QUEUED
    jobs.attach_reader()
    assert len(jobs.receive(1)) == 1 and jobs.waiting() == 9  # one read took all ten
    for i in range(10):  # had the worker died now, its successor's queue would still hold ten
        assert sender.submit("E", (SOCKET,), b"again %d" % i, False, 1.0)[0][0] is Status.QUEUED
    assert jobs.depth() == 19  # nine read ahead and ten in the pipe
    jobs.close()


@pytest.mark.parametrize("junk", [
    b"\xff\xfe not UTF-8",
    b"[[1, [[\"confirmed\", \"\"]]",  # cut short
    b"5",  # JSON, not a list of replies
    b"[[1, 5]]",  # statuses not a list
    b"[[[1], []]]",  # a seq that is not a number
    b"[1, 2]",  # replies not pairs
    b"[[1, [[\"bogus\", \"\"]]]]",  # a status that is none of ours
    b"[[1, [[\"confirmed\", []]]]]",  # a reason that is not text
    b"[[1, [[\"confirmed\", \"\", 3]]]]",  # a status that is not a pair
])
def test_a_malformed_reply_datagram_is_logged_and_ignored_and_the_callers_own_reply_still_comes(junk, caplog):
    box, replier = ReplyBox(), Replier()
    box.expect(1)
    replier.sock.sendto(junk, box.address)
    reply(replier, box.address, 1, (("confirmed", "the real one"),))
    assert box.wait(1, time.monotonic() + 2) == (("confirmed", "the real one"),)
    assert f"ignored a malformed reply datagram ({len(junk)} bytes)" in caplog.text


def test_a_reply_forged_by_another_users_process_is_dropped_and_the_real_one_is_read():
    box, replier = ReplyBox(), Replier()
    box.expect(5)
    dropped_before = replies._foreign

    def forge():  # another user (nobody) sends the worker's answer first
        forger = Replier()
        reply(forger, box.address, 5, (("confirmed", "forged"),))
        return forger.sent, forger.lost, os.getuid()

    assert as_another_user(forge) == (1, 0, ANOTHER_UID)  # really sent, from uid 65534
    reply(replier, box.address, 5, (("failed", "the real one"),))
    assert box.wait(5, time.monotonic() + 2) == (("failed", "the real one"),)
    assert replies._foreign == dropped_before + 1  # the forged datagram arrived, and was dropped


def test_a_child_forked_while_another_thread_holds_the_senders_locks_still_raises():
    jobs = JobQueue(FORK, maxsize=10)
    sender = JobSender(jobs)
    held, release = threading.Event(), threading.Event()

    def hold():  # a control-socket raise in the parent's other thread, say
        with jobs._local_lock, sender._box_lock:
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(5)
    pid = os.fork()
    if pid == 0:
        ok = sender.submit("E", (SOCKET,), b"from the child", False, 1.0)[0][0] is Status.QUEUED
        os._exit(0 if ok and sender._reply_box().pid == os.getpid() else 1)
    release.set()
    holder.join(5)
    deadline = time.monotonic() + 10
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0, "the child deadlocked or failed"
    jobs.close()


def test_a_job_carries_its_message_id_and_a_sync_caller_without_an_answer_is_told_the_outcome_is_unknown():
    jobs = JobQueue(FORK, maxsize=10)
    sender = JobSender(jobs)
    started = time.monotonic()
    (status, reason), = sender.submit("E", (SOCKET,), b"E\n", True, 0.2, "order-42")  # nobody reads the queue
    assert status is Status.TIMEOUT and time.monotonic() - started < 0.5
    assert reason.startswith("outcome unknown") and "may still be published" in reason
    jobs.attach_reader()
    (payload,) = jobs.receive(10)
    assert job.decode(payload)[3] == b"order-42"
    jobs.close()


@hypothesis.given(st.lists(st.tuples(st.integers(0, 2**63), st.lists(st.tuples(st.text(), st.text()), min_size=1)),
                           min_size=1))
def test_replies_are_encoded_exactly_as_json_dumps_writes_them(batch):
    assert replies.encode_replies(batch) == json.dumps(batch, separators=(",", ":")).encode()
