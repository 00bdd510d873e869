"""Report training progress to the local Vigil agent (standard library only).

Usage::

    from vigil import Progress
    p = Progress()                      # reads VIGIL_PROGRESS_URL and VIGIL_JOB
    p.start(rank=0, world_size=8, card=0)
    p.step(120, "begin"); ...; p.step(120, "collective"); ...; p.step(120, "end", tokens=65536)
    p.checkpoint(100, "/ckpt/step-100")
    p.end()

With DistributedDataParallel, the ``collective`` phase can come from a
communication hook instead of a manual call::

    ddp = torch.nn.parallel.DistributedDataParallel(model)
    p.register_collective_hook(ddp)     # or, by hand:
    # ddp.register_comm_hook(CollectiveHookState(p), collective_hook)

The hook reports ``collective`` once per step, when the first gradient bucket
is ready, and then runs PyTorch's own ``allreduce_hook``.

Every call is best effort and never blocks: records go into a bounded queue
that a background daemon thread posts to the agent. When the queue is full
(the agent is away or slow) records are dropped and counted in
``Progress.dropped``; calls never raise. ``end()`` and interpreter exit wait
a short, bounded time for queued records to be sent. Without
VIGIL_PROGRESS_URL or a job, every call does nothing.
"""

import atexit
import json
import os
import queue
import threading
import time
import urllib.request

__all__ = ["Progress", "CollectiveHookState", "collective_hook"]

# Records posted in one request at most (the agent accepts NDJSON).
_BATCH = 64


class Progress:
    def __init__(self, url=None, job=None, rank=None, timeout=0.5, queue_size=1024, flush_timeout=2.0):
        self.url = (url or os.environ.get("VIGIL_PROGRESS_URL", "")).rstrip("/")
        self.job = job or os.environ.get("VIGIL_JOB", "")
        self.rank = rank
        self.timeout = timeout
        self.flush_timeout = flush_timeout
        self.dropped = 0  # records dropped: queue full, or the agent did not take them
        self.sent = 0  # records the agent accepted
        self._queue_size = max(1, int(queue_size))
        self._lock = threading.Lock()
        self._queue = None
        self._thread = None
        self._pid = None
        self._busy = False
        self._step = None
        self._phase = None
        self._atexit = False

    # --- records -----------------------------------------------------------

    def start(self, rank, world_size, card=None, local_rank=None):
        self.rank = rank
        rec = {"type": "start", "rank": rank, "world_size": world_size, "pid": os.getpid()}
        if card is not None:
            rec["card"] = card
        if local_rank is not None:
            rec["local_rank"] = local_rank
        return self._post(rec)

    def step(self, step, phase="end", samples=None, tokens=None):
        self._step, self._phase = step, phase
        rec = {"type": "step", "step": step, "phase": phase}
        if samples is not None:
            rec["samples"] = samples
        if tokens is not None:
            rec["tokens"] = tokens
        return self._post(rec)

    def collective(self, step=None):
        """Reports that this rank entered the current step's first collective.

        The step defaults to the one last reported as begun (or the one after
        the last step reported as ended)."""
        if step is None:
            step = self.current_step()
            if step is None:
                return False
        return self._post({"type": "step", "step": step, "phase": "collective"})

    def current_step(self):
        if self._step is None:
            return None
        return self._step + 1 if self._phase == "end" else self._step

    def checkpoint(self, step, path, nbytes=None, sha256=None):
        rec = {"type": "checkpoint", "step": step, "path": path}
        if nbytes is not None:
            rec["bytes"] = nbytes
        if sha256 is not None:
            rec["sha256"] = sha256
        return self._post(rec)

    def end(self, status="ok"):
        ok = self._post({"type": "end", "status": status})
        self.flush()
        return ok

    def register_collective_hook(self, ddp_model, process_group=None):
        """Registers ``collective_hook`` on a DistributedDataParallel model.
        Returns False (and registers nothing) if that fails."""
        try:
            ddp_model.register_comm_hook(CollectiveHookState(self, process_group), collective_hook)
            return True
        except Exception:
            return False

    # --- delivery ----------------------------------------------------------

    def flush(self, timeout=None):
        """Waits up to ``timeout`` seconds (default ``flush_timeout``) for the
        queued records to be posted. Returns True if none is left."""
        q = self._queue
        if q is None or self._pid != os.getpid():
            return True
        deadline = time.monotonic() + (self.flush_timeout if timeout is None else timeout)
        while q.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return not q.unfinished_tasks

    def _post(self, record):
        try:
            if not self.url or not self.job:
                return False
            record.setdefault("job", self.job)
            record.setdefault("rank", self.rank)
            body = json.dumps(record)
            q = self._ensure_sender()
            q.put_nowait(body)
            return True
        except queue.Full:
            self.dropped += 1
            return False
        except Exception:
            return False

    def _ensure_sender(self):
        pid = os.getpid()
        if self._pid == pid and self._queue is not None:
            return self._queue
        with self._lock:
            if self._pid != pid or self._queue is None:
                # First use, or a forked child (threads do not survive fork).
                self._queue = queue.Queue(maxsize=self._queue_size)
                self._pid = pid
                self._thread = threading.Thread(
                    target=self._run, args=(self._queue,), name="vigil-progress", daemon=True
                )
                self._thread.start()
                if not self._atexit:
                    atexit.register(self.flush)
                    self._atexit = True
            return self._queue

    def _run(self, q):
        while True:
            batch = [q.get()]
            while len(batch) < _BATCH:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            try:
                if self._send("\n".join(batch).encode()):
                    self.sent += len(batch)
                else:
                    self.dropped += len(batch)
            except Exception:
                self.dropped += len(batch)
            finally:
                for _ in batch:
                    q.task_done()

    def _send(self, body):
        req = urllib.request.Request(
            self.url + "/v1/progress",
            data=body,
            method="POST",
            headers={"Content-Type": "application/x-ndjson"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status == 202
        except Exception:
            return False


class CollectiveHookState:
    """State for ``collective_hook``: the ``Progress`` to report to and the
    process group to all-reduce over (None: the default group)."""

    def __init__(self, progress, process_group=None):
        self.progress = progress
        self.process_group = process_group
        self._armed = True

    def __setstate__(self, state):  # DDP may pickle hook state
        self.__dict__.update(state)

    def __getstate__(self):
        d = dict(self.__dict__)
        d["progress"] = None
        return d


def collective_hook(state, bucket):
    """A DDP communication hook: reports the ``collective`` phase once per
    step (at the first gradient bucket of the step) and then delegates to
    ``torch.distributed.algorithms.ddp_comm_hooks.default_hooks.allreduce_hook``.

    Use with ``ddp_model.register_comm_hook(CollectiveHookState(progress), collective_hook)``.
    Reporting never raises; the all-reduce's own errors do."""
    try:
        if state._armed:
            state._armed = False
            if state.progress is not None:
                state.progress.collective()
        if bucket.is_last():
            state._armed = True
    except Exception:
        pass
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    return default_hooks.allreduce_hook(state.process_group, bucket)
