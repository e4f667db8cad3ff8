"""Jobs on a Ray Serve cluster: the daemon stays the gateway, replicas run the engine.

`inpaintd serve --executor ray` keeps everything a client meets in the daemon (socket,
signatures, fair queue, result store: unchanged) and hands each job to `RayExecutor`,
which sends it to a Ray Serve deployment of the engine, `InpaintReplica`:

* each replica holds a `ModelRegistry` built from the gateway's own model arguments, and
  a `@serve.multiplexed` loader (one model per replica by default), so that Serve routes a
  job to a replica that already holds its model (`multiplexed_model_id`);
* `InpaintReplica.run` is an async generator: it runs `runner.run_job` in a thread and
  yields what the executor turns into events (progress, loads, the end) in order, the
  result arrays last.  The pixels cross the network once each way, as numpy arrays in
  Ray's object store (no PNG, no base64);
* cancelling the stream (`response.cancel()`) stops the generator at its next await, and
  the generator sets the flag the job's step callback checks: the engine stops at its
  next step.  (A sync generator would keep running: Ray cannot interrupt a thread.)

The Ray driver is not the daemon's process but a child of it, the bridge (`_Driver`; see
"the gateway" below for why): a cluster that goes away takes the bridge with it, never
the daemon, whose jobs then fail with the reason while it keeps answering.  Nothing here
blocks the daemon's socket thread: a writer thread sends jobs to the bridge, a reader
thread turns what it sends back into events and calls `wake`.  Ray is imported only in
the bridge and the replicas (`inpaintd serve --executor local` never pays for it).
docs/studio.md tells how to run it on a real cluster.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from inpaintd_protocol.messages import Code, Stage

from .engines.base import JobCancelled
from .executor import (
    TERMINAL,
    Cancelled,
    Event,
    Failed,
    JobRequest,
    LoadEnded,
    LoadStarted,
    Progressed,
    Succeeded,
    drain,
    failure,
)
from .runner import run_job

log = logging.getLogger("inpaintd")

#: The note a result carries to say where it ran (the artist sees it; tests read it).
REPLICA_NOTE = "ran on Ray replica "
#: How often the watcher asks Serve for the replica count, and how long an answer may take
#: before the cluster counts as gone.
WATCH_INTERVAL = 1.0
WATCH_TIMEOUT = 10.0
#: How long a replica lets progress items gather before it streams them as one batch (s).
BATCH_WINDOW = 0.05
#: Items that say a job moved on (they may wait for the window), as opposed to its end.
PASSING = ("started", "progress", "load_started", "load_ended")
#: The Serve deployment's name (in the app named by RayOptions.app_name).
DEPLOYMENT = "InpaintReplica"


def require_ray() -> None:
    """Raise ImportError with the fix when Ray Serve is not installed."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"--executor ray needs Ray Serve, which is not installed ({exc}); "
                          "install it with: pip install 'inpaintd[ray]'") from exc


# -- the replica: runs on the cluster ---------------------------------------------------------


class InpaintReplica:
    """One replica of the engine deployment (wrapped by `serve.deployment` at start).

    `run` yields lists of items, in order: ("started", replica, stats), ("load_started", model),
    ("progress", stage, step, total), ("load_ended", model, device | None), then exactly one
    of ("succeeded", dict), ("failed", code, message), ("cancelled",)."""

    def __init__(self, registry_args: dict[str, Any], models_per_replica: int = 1, preload: str | None = None) -> None:
        from ray import serve

        from .models import ModelRegistry

        self.registry = ModelRegistry(**registry_args)
        context = serve.get_replica_context()
        self.identity = f"{context.replica_id.unique_id} on {socket.gethostname()} (pid {os.getpid()})"
        self._listeners: dict[str, list[Callable[[str, int, int], None]]] = {}
        self._lock = threading.Lock()
        #: One job on the engines at a time: a cancelled job's thread runs on to its next
        #: step while Serve may already have sent this replica the next job, and the two
        #: would share a pipeline's scheduler (or the next load would close it under the first).
        self._engine_lock = threading.Lock()
        #: What this replica did: jobs streamed, job threads still running (a cancelled job's
        #: thread ends at its next step), jobs cancelled, and steps reported after a cancel.
        self.stats: dict[str, int] = {"jobs": 0, "threads": 0, "cancelled": 0, "steps_after_cancel": 0}

        async def load(model_id: str) -> str:
            # The registry does the loading (one diffusion model warm per registry); the
            # multiplexer's record of what this replica holds is what routes jobs here.
            await asyncio.to_thread(self.registry.load, model_id, lambda *p: self._tell_loaders(model_id, *p))
            return model_id

        self._get_model = serve.multiplexed(max_num_models_per_replica=models_per_replica)(load)
        if preload:
            try:
                self.registry.load(preload)
            except Exception:
                log.exception("replica could not preload %s", preload)

    def _tell_loaders(self, model_id: str, stage: str, step: int, total: int) -> None:
        with self._lock:
            listeners = list(self._listeners.get(model_id, []))
        for fn in listeners:
            fn(stage, step, total)

    def _count(self, key: str, delta: int = 1) -> None:
        with self._lock:
            self.stats[key] += delta

    async def run(self, request: JobRequest) -> AsyncIterator[list[tuple]]:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[tuple | None] = asyncio.Queue()
        cancel = threading.Event()
        self._count("jobs")

        def push(item: tuple | None) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        def work() -> None:
            try:
                push(self._work(request, push, cancel, loop))
            finally:
                self._count("threads", -1)
                push(None)

        try:
            # Where it runs, and what this replica did before (the gateway logs both): the
            # first item of the first batch, streamed with what the job says first.
            items.put_nowait(("started", self.identity, dict(self.stats)))
            self._count("threads")
            threading.Thread(target=work, name=f"inpaintd-job-{request.job_id}", daemon=True).start()
            # Items ready together go as one batch: each streamed object costs Ray an object
            # and a round of messages, more than a tiny model's step.
            while True:
                ready = [await items.get()]
                if ready[0] is not None and ready[0][0] in PASSING:
                    # Let the next steps of a fast model gather for a moment: every streamed
                    # object costs a round of messages between three processes, more than a
                    # tiny step; the artist cannot see 20 ms, and cancel still lands here.
                    # The job's end goes at once.
                    until = loop.time() + BATCH_WINDOW
                    while (left := until - loop.time()) > 0:
                        try:
                            item = await asyncio.wait_for(items.get(), left)
                        except asyncio.TimeoutError:
                            break
                        ready.append(item)
                        if item is None or item[0] not in PASSING:
                            break
                while not items.empty():
                    ready.append(items.get_nowait())
                batch = [item for item in ready if item is not None]
                if batch:
                    yield batch
                if len(batch) < len(ready):  # the end (None) was among them
                    return
        finally:
            # The caller cancelled the stream (or went away): the engine stops at its next step.
            cancel.set()

    def _work(self, request: JobRequest, push: Callable[[tuple], None], cancel: threading.Event,
              loop: asyncio.AbstractEventLoop) -> tuple:
        """The job, on its own thread; returns its terminal item."""
        model = request.model
        cancelled = cancel.is_set

        def progress(stage: str, step: int, total: int) -> None:
            if cancel.is_set():
                self._count("steps_after_cancel")
            push(("progress", str(stage), step, total))

        def report_load(stage: str, step: int, total: int) -> None:
            if stage == Stage.LOADING and step < total:
                push(("load_started", model))
            progress(stage, step, total)

        engine = None
        with self._lock:
            self._listeners.setdefault(model, []).append(report_load)
        with self._engine_lock:
            return self._work_alone(request, model, engine, report_load, progress, push, cancelled, loop)

    def _work_alone(self, request: JobRequest, model: str, engine: Any, report_load: Callable[[str, int, int], None],
                    progress: Callable[[str, int, int], None], push: Callable[[tuple], None],
                    cancelled: Callable[[], bool], loop: asyncio.AbstractEventLoop) -> tuple:
        """`_work` under the engine lock: load (or find warm), run, and say how it ended."""
        try:
            try:
                # Through the multiplexer, on the replica's loop: it records the model here.
                asyncio.run_coroutine_threadsafe(self._get_model(model), loop).result()
                engine = self.registry.load(model, report_load)  # warm now (reloads if the registry let it go)
            finally:
                with self._lock:
                    self._listeners[model].remove(report_load)
                push(("load_ended", engine.model_id if engine else model, engine.device if engine else None))
            if cancelled():
                raise JobCancelled()
            caps = self.registry.caps(model)
            output = run_job(engine, request.image, request.mask, request.options, request.seeds, progress, cancelled, caps,
                             references=request.references, loras=request.loras, embeddings=request.embeddings)
        except JobCancelled:
            self._count("cancelled")
            return ("cancelled",)
        except Exception as exc:
            code, text = failure(exc)
            log.exception("job %s failed on replica %s", request.job_id, self.identity)
            return ("failed", str(code), text)
        output.notes = [*output.notes, REPLICA_NOTE + self.identity]
        return ("succeeded", {"output": output, "engine": engine.name, "device": engine.device, "replica": self.identity})


# -- what the gateway deploys, and how ----------------------------------------------------------


@dataclass
class RayOptions:
    """How the gateway reaches the cluster and what it deploys there."""

    address: str | None = None  # a cluster to join (host:port of its head; not ray://); None: start a local one
    min_replicas: int = 1
    max_replicas: int = 1
    gpus_per_replica: float | None = None  # fractions share a card; None: 1 where the cluster has GPUs, else 0
    cpus_per_replica: float = 1.0
    models_per_replica: int = 1  # the multiplexer's limit: 1 gives each replica one model (affinity)
    jobs_per_replica: int = 1  # max_ongoing_requests: a GPU runs one job at a time
    retries: int = 1  # a job whose replica died goes to another this many times
    app_name: str = "inpaintd"
    init_kwargs: dict[str, Any] = field(default_factory=dict)  # for a local cluster: num_cpus, num_gpus, ...

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError(f"replicas {self.min_replicas}:{self.max_replicas}: need 0 <= MIN <= MAX and MAX >= 1")
        if self.gpus_per_replica is not None and self.gpus_per_replica < 0:
            raise ValueError(f"--gpus-per-replica {self.gpus_per_replica}: must be 0 or more")

    def capacity(self, running_replicas: int) -> int:
        """Jobs the deployment can take with `running_replicas` up: a slot per running
        replica, and one replica's worth more while it may still grow (so that Serve sees
        a queue and the autoscaler adds a replica)."""
        grow = 1 if running_replicas < self.max_replicas else 0
        return max(running_replicas + grow, 1) * self.jobs_per_replica


def parse_replicas(text: str) -> tuple[int, int]:
    """`N` or `MIN:MAX` -> (MIN, MAX)."""
    low, _, high = text.partition(":")
    try:
        lo = int(low)
        hi = int(high) if high else lo
    except ValueError:
        raise ValueError(f"--replicas {text!r}: expected N or MIN:MAX, e.g. 1:4") from None
    if not 0 <= lo <= hi or hi < 1:
        raise ValueError(f"--replicas {text!r}: need 0 <= MIN <= MAX and MAX >= 1")
    return lo, hi


# -- the gateway: the daemon's side of the seam -----------------------------------------------------
#
# Ray ends a driver process whose local raylet (and so its object store) goes away: "The
# connection to the plasma store is failed. Terminate the process."  A daemon that were its
# own Ray driver would die with the cluster.  So the driver is a child process, the bridge
# (`_Driver` below, started by `RayExecutor`), and the daemon talks to it over a Unix socket
# pair: jobs and cancels one way, events and the replica count the other.  The pixels cross
# that local socket once each way (a copy, no encoding) and the network once each way, in
# Ray's object store.  When the bridge dies, the jobs it held fail with the reason, the
# daemon keeps serving, and a new bridge is started after a pause.

#: Pauses before restarting a bridge that died (seconds), growing to the last.
RESTART_DELAYS = (2.0, 5.0, 10.0, 30.0, 60.0)


class RayExecutor:
    """The Executor of a daemon whose jobs run on Ray Serve replicas (see the module doc)."""

    def __init__(self, registry_args: dict[str, Any], options: RayOptions | None = None, *, preload: str | None = None) -> None:
        """`registry_args`: the keyword arguments of the gateway's ModelRegistry (each
        replica builds its own from them).  `preload`: the model each replica loads before
        it takes jobs (the daemon reports `loading` until the deployment is up)."""
        self.registry_args = dict(registry_args)
        self.options = options or RayOptions()
        self.preload = preload
        self.info: dict[str, Any] = {}  # what the bridge said when its deployment came up
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._wake: Callable[[], None] = lambda: None
        self._lock = threading.Lock()
        self._live: set[str] = set()  # handed to the current bridge, not ended
        self._replicas = 0
        self._ready = False  # the first bridge has answered (up or not)
        self._down: str | None = None  # why jobs cannot run now
        self._closing = threading.Event()
        self._bridge: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._starts = 0

    # -- the Executor interface (the daemon's socket thread) -------------------------------------

    @property
    def capacity(self) -> int:
        """0 until the deployment is up; then what it can take (RayOptions.capacity).  While
        the cluster is down, jobs are still taken and fail at once with the reason, rather
        than wait in the queue for nothing."""
        if not self._ready or self._closing.is_set():
            return 0
        if self._down is not None:
            return self.options.max_replicas * self.options.jobs_per_replica
        return self.options.capacity(self._replicas)

    def start(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._post(LoadStarted(job_id=None, model=self.preload or "ray deployment"))
        threading.Thread(target=self._keep_bridge, name="inpaintd-ray-bridge", daemon=True).start()
        threading.Thread(target=self._write, name="inpaintd-ray-writer", daemon=True).start()

    def submit(self, request: JobRequest) -> None:
        with self._lock:
            down = self._down
            if down is None:
                self._live.add(request.job_id)
                self._outbox.put(("submit", request))
        if down is not None:
            self._post(Failed(job_id=request.job_id, code=Code.ENGINE_FAILURE, message=down))

    def cancel(self, job_id: str) -> None:
        self._outbox.put(("cancel", job_id))

    def events(self) -> list[Event]:
        return drain(self._events)

    def close(self, timeout: float = 30.0) -> None:
        self._closing.set()
        bridge = self._bridge
        self._outbox.put(("close", timeout))
        self._outbox.put(None)
        if bridge is not None:
            try:
                bridge.wait(timeout + 15)  # its own teardown (serve, the cluster) after the jobs
            except subprocess.TimeoutExpired:
                log.error("ray: the bridge did not exit; killing it")
                bridge.kill()
                bridge.wait()
        self._fail_live("the daemon is shutting down", cancelled=True)

    # -- the bridge process ------------------------------------------------------------------------

    def _post(self, event: Event) -> None:
        self._events.put(event)
        self._wake()

    def _fail_live(self, why: str, cancelled: bool = False) -> None:
        with self._lock:
            live, self._live = self._live, set()
        for job_id in sorted(live):
            self._post(Cancelled(job_id=job_id) if cancelled else Failed(job_id=job_id, code=Code.ENGINE_FAILURE, message=why))

    def _keep_bridge(self) -> None:
        """Start the bridge, read it until it exits, and start another while not closing."""
        delays = iter(RESTART_DELAYS)
        delay = RESTART_DELAYS[0]
        while not self._closing.is_set():
            up = self._run_bridge()
            if self._closing.is_set():
                return
            delay = RESTART_DELAYS[0] if up else next(delays, RESTART_DELAYS[-1])
            if up:
                delays = iter(RESTART_DELAYS)
            log.warning("ray: starting a new bridge to the cluster in %.0f s", delay)
            if self._closing.wait(delay):
                return

    def _run_bridge(self) -> bool:
        """One bridge's life; True if its deployment came up."""
        parent, child = socket.socketpair()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        command = [sys.executable, "-c", "from inpaintd.ray_executor import bridge_main; bridge_main()", str(child.fileno())]
        try:
            self._bridge = bridge = subprocess.Popen(command, pass_fds=[child.fileno()], env=env)
        except OSError as exc:
            child.close()
            parent.close()
            self._bridge_gone(f"the Ray bridge process could not be started: {exc}", first=not self._ready)
            return False
        child.close()
        conn = Connection(parent.detach())
        self._starts += 1
        up = False
        try:
            conn.send(("config", self.registry_args, self.options, self.preload, logging.getLogger("inpaintd").level))
            self._conn = conn
            while True:
                message = conn.recv()
                kind = message[0]
                if kind == "event":
                    self._event(message[1])
                elif kind == "replicas":
                    self._replicas = message[1]
                    self._wake()
                elif kind == "ready":
                    up = True
                    self._up(message[1])
                elif kind == "down":
                    self._set_down(message[1])
        except (EOFError, OSError):
            pass
        finally:
            self._conn = None
            conn.close()
        code = bridge.wait()
        if not self._closing.is_set():
            why = self._down_reason(code, up)
            self._bridge_gone(why, first=not self._ready)
        return up

    def _down_reason(self, code: int, up: bool) -> str:
        where = f"at {self.options.address}" if self.options.address else "(local)"
        if up:
            return (f"the Ray cluster {where} went away (the gateway's Ray driver exited with status {code}); "
                    "the gateway reconnects when it is back")
        return self._down or f"the Ray cluster {where} could not be started or reached (status {code}); see the daemon log"

    def _up(self, info: dict[str, Any]) -> None:
        self.info = info
        self._replicas = info.get("replicas", 0)
        first = not self._ready
        with self._lock:
            self._down = None
        self._ready = True
        if first:
            self._post(LoadEnded(job_id=None, model=self.preload or "ray deployment", device=info.get("device", "ray")))
        else:
            log.warning("ray: the cluster is back (%d replica(s))", self._replicas)
            self._wake()

    def _set_down(self, why: str | None) -> None:
        with self._lock:
            self._down = why
        self._wake()

    def _bridge_gone(self, why: str, first: bool) -> None:
        log.error("ray: %s", why)
        with self._lock:
            self._down = why
        self._fail_live(why)
        if first:
            self._ready = True
            self._post(LoadEnded(job_id=None, model=self.preload or "ray deployment", device=None))
        self._wake()

    def _event(self, event: Event) -> None:
        if isinstance(event, TERMINAL):
            with self._lock:
                if event.job_id not in self._live:
                    return  # already ended here (its bridge died first)
                self._live.discard(event.job_id)
        self._post(event)

    def _write(self) -> None:
        """Send what the daemon asked for to the bridge (off the socket thread: a large
        image, or a bridge that stopped reading, never holds the daemon up)."""
        while True:
            message = self._outbox.get()
            if message is None:
                return
            conn = self._conn
            if conn is None:
                if message[0] == "submit":
                    self._fail_live(self._down or "the Ray bridge is not running")
                continue
            try:
                conn.send(message)
            except (OSError, ValueError):
                pass  # the reader sees the bridge go and fails its jobs


# -- the bridge: the Ray driver, in its own process ------------------------------------------------


def bridge_main() -> None:
    """`python -c "from inpaintd.ray_executor import bridge_main; bridge_main()" FD`: FD is
    the bridge's end of the socket pair.  (Not `-m`: the deployment class must be pickled
    by its importable name, not as `__main__`'s.)"""
    # The bridge holds the router.  A job it sends to a replica without its model costs a
    # model load (tens of seconds on a GPU), so a busy replica gets longer than Serve's 0.1 s
    # to answer the queue-length probe before the router looks elsewhere.  (Read when
    # ray.serve is imported, below this.)
    os.environ.setdefault("RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "1.0")
    os.environ.setdefault("RAY_SERVE_MAX_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "5.0")
    conn = Connection(int(sys.argv[1]))
    kind, registry_args, options, preload, level = conn.recv()
    logging.basicConfig(level=level or logging.INFO, format="%(asctime)s %(levelname)s %(name)s (ray bridge): %(message)s",
                        stream=sys.stderr)
    driver = _Driver(conn, registry_args, options, preload)
    sys.exit(driver.main())


class _Driver:
    """The bridge's work: start or join the cluster, deploy, stream jobs, watch."""

    def __init__(self, conn: Connection, registry_args: dict[str, Any], options: RayOptions, preload: str | None) -> None:
        self.conn = conn
        self.registry_args = registry_args
        self.options = options
        self.preload = preload
        self._send_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._closing = threading.Event()
        self._close_timeout = 30.0
        self._down: str | None = None
        self._started_cluster = False
        self._orphaned = False  # the daemon went away without closing
        self._handle: Any = None
        self._jobs: dict[str, _Job] = {}  # the loop thread's

    def send(self, message: tuple) -> None:
        with self._send_lock:
            try:
                self.conn.send(message)
            except (OSError, ValueError):
                self._closing.set()  # the daemon is gone

    def post(self, event: Event) -> None:
        self.send(("event", event))

    def main(self) -> int:
        # On the main thread, which lives as long as the bridge: a local cluster's processes
        # get SIGKILL when the *thread* that started them ends (PR_SET_PDEATHSIG).
        try:
            info = self._connect()
        except Exception as exc:
            why = f"the Ray cluster could not be started or reached: {type(exc).__name__}: {str(exc)[:300]}"
            log.error("%s", why)
            self.send(("down", why))
            self._tear_down()
            return 3
        self.send(("ready", info))
        threading.Thread(target=self._read, name="inpaintd-ray-reader", daemon=True).start()
        threading.Thread(target=self._watch, name="inpaintd-ray-watch", daemon=True).start()
        self._loop.run_forever()
        self._tear_down()
        return 0

    def _read(self) -> None:
        """The daemon's requests, onto the loop; a closed socket (the daemon died) closes."""
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                message = ("close", 5.0)  # the daemon died: its jobs end; a restarted one takes the app over
                self._orphaned = True
            kind = message[0]
            if kind == "submit":
                self._loop.call_soon_threadsafe(self._launch, message[1])
            elif kind == "cancel":
                self._loop.call_soon_threadsafe(self._cancel, message[1])
            elif kind == "close":
                self._closing.set()
                asyncio.run_coroutine_threadsafe(self._close(message[1]), self._loop)
                return

    async def _close(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for job_id in list(self._jobs):
            self._cancel(job_id)
        while self._jobs and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for job in list(self._jobs.values()):  # every job gets its terminal event
            self._end(job, Cancelled(job_id=job.request.job_id))
        self._loop.stop()

    def _connect(self) -> dict[str, Any]:
        require_ray()
        import ray
        from ray import serve

        o = self.options
        t0 = time.perf_counter()
        if o.address:
            ray.init(address=o.address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            kwargs = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False, **o.init_kwargs}
            ray.init(address="local", **kwargs)
            self._started_cluster = True
        t1 = time.perf_counter()
        serve.start(proxy_location="Disabled")  # handles only: no HTTP port opened
        gpus = o.gpus_per_replica
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        autoscaling = None
        if o.max_replicas > o.min_replicas:
            autoscaling = {"min_replicas": o.min_replicas, "max_replicas": o.max_replicas,
                           "initial_replicas": max(o.min_replicas, 1), "target_ongoing_requests": o.jobs_per_replica,
                           "upscale_delay_s": 2.0, "downscale_delay_s": 120.0}
        deployment = serve.deployment(InpaintReplica, name=DEPLOYMENT).options(
            num_replicas=None if autoscaling else o.max_replicas,
            autoscaling_config=autoscaling,
            max_ongoing_requests=o.jobs_per_replica,
            max_queued_requests=-1,
            ray_actor_options={"num_gpus": gpus, "num_cpus": o.cpus_per_replica},
            health_check_period_s=2.0,
            health_check_timeout_s=30.0,
        )
        app = deployment.bind(self.registry_args, o.models_per_replica, self.preload)
        self._handle = serve.run(app, name=o.app_name, route_prefix=None)
        t2 = time.perf_counter()
        replicas = self._count_replicas()
        where = "started a local cluster" if self._started_cluster else f"joined the cluster at {o.address}"
        log.info("ray: %s in %.1f s; %d replica(s) of %s up in %.1f s (%.2g GPU each)", where, t1 - t0, replicas,
                 DEPLOYMENT, t2 - t1, gpus)
        return {"replicas": replicas, "device": f"ray ({replicas} replica(s), {gpus:g} GPU each)", "gpus_per_replica": gpus,
                "cluster_seconds": round(t1 - t0, 3), "deploy_seconds": round(t2 - t1, 3), "pid": os.getpid(),
                "started_cluster": self._started_cluster}

    def _count_replicas(self) -> int:
        from ray import serve

        app = serve.status().applications.get(self.options.app_name)
        deployment = app.deployments.get(DEPLOYMENT) if app is not None else None
        if deployment is None:
            return 0
        return sum(n for state, n in deployment.replica_states.items() if str(getattr(state, "value", state)) == "RUNNING")

    def _watch(self) -> None:
        """Every WATCH_INTERVAL: how many replicas run; a cluster that stops answering is down."""
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inpaintd-ray-status")
        pending: concurrent.futures.Future[int] | None = None
        asked = time.monotonic()
        told = -1
        while not self._closing.wait(WATCH_INTERVAL):
            if pending is None:
                pending, asked = pool.submit(self._count_replicas), time.monotonic()
            try:
                count = pending.result(timeout=max(0.0, WATCH_TIMEOUT - (time.monotonic() - asked)))
            except concurrent.futures.TimeoutError:
                self._mark_down(f"the Ray cluster did not answer within {WATCH_TIMEOUT:.0f} s")
                continue  # the question stays asked: an answer brings the cluster back
            except Exception as exc:
                pending = None
                self._mark_down(f"the Ray cluster stopped answering ({type(exc).__name__}: {str(exc)[:200]})")
                continue
            pending = None
            if self._down is not None:
                log.warning("ray: the cluster answers again (%d replica(s))", count)
                self._down = None
                self.send(("down", None))
            if count != told:
                told = count
                self.send(("replicas", count))
        pool.shutdown(wait=False)

    def _mark_down(self, why: str) -> None:
        if self._down is None:
            self._down = why + "; jobs fail until it is back"
            log.error("ray: %s", self._down)
            self.send(("down", self._down))
            self._loop.call_soon_threadsafe(self._fail_all)

    def _tear_down(self) -> None:
        """Take down what this bridge started: the app on a cluster it joined; Serve and the
        cluster itself if it started them.  (When the daemon died rather than closed, the app
        on a joined cluster stays, warm, for the daemon restarted in its place, which deploys
        it again under the same name: deleting it here would race with that.)"""
        try:
            import ray
            from ray import serve

            if self._handle is not None and self._down is None:
                if self._started_cluster:
                    serve.shutdown()
                elif not self._orphaned:
                    serve.delete(self.options.app_name)
            if ray.is_initialized():
                ray.shutdown()
        except Exception:
            log.exception("ray: tearing down")
        self._handle = None

    # -- jobs (the loop thread) -------------------------------------------------------------------

    def _end(self, job: _Job, event: Event) -> None:
        """A job's one terminal event."""
        if job.ended:
            return
        job.ended = True
        self._jobs.pop(job.request.job_id, None)
        self.post(event)

    def _launch(self, request: JobRequest) -> None:
        job = _Job(request)
        self._jobs[request.job_id] = job
        if self._down is not None or self._handle is None or self._closing.is_set():
            self._end(job, Failed(job_id=request.job_id, code=Code.ENGINE_FAILURE, message=self._down or "the Ray deployment is not up"))
            return
        job.task = self._loop.create_task(self._run(job))

    def _cancel(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is None:
            return
        job.cancelled = True
        if job.response is not None:
            job.response.cancel()

    def _fail_all(self) -> None:
        for job in list(self._jobs.values()):
            if job.response is not None:
                job.response.cancel()
            self._end(job, Failed(job_id=job.request.job_id, code=Code.ENGINE_FAILURE, message=self._down or "the Ray cluster went away"))

    async def _run(self, job: _Job) -> None:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, TaskCancelledError
        from ray.serve.exceptions import RequestCancelledError

        request = job.request
        job_id = request.job_id
        died: list[str] = []
        while not job.ended:
            try:
                response = self._handle.options(stream=True, multiplexed_model_id=request.model).run.remote(request)
                job.response = response
                if job.cancelled:
                    response.cancel()
                end = await self._stream(job, response)
                if end is not None:
                    self._end(job, end)
                elif not job.ended:
                    why = "the Ray replica ended the job without a result"
                    self._end(job, Failed(job_id=job_id, code=Code.ENGINE_FAILURE, message=why))
            except (RequestCancelledError, TaskCancelledError, asyncio.CancelledError):
                self._end(job, Cancelled(job_id=job_id) if job.cancelled or self._closing.is_set() else
                          Failed(job_id=job_id, code=Code.ENGINE_FAILURE, message="the job was cancelled on the Ray cluster"))
            except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                if job.ended:
                    return
                died.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                if job.cancelled:
                    self._end(job, Cancelled(job_id=job_id))
                elif len(died) <= self.options.retries:
                    log.warning("job %s: its Ray replica died (%s); retrying on another replica", job_id, died[-1])
                    continue
                else:
                    self._end(job, Failed(job_id=job_id, code=Code.ENGINE_FAILURE, message=(
                        f"the Ray replica running this job died, and so did the {len(died) - 1} it was retried on: {died[-1]}")))
            except Exception as exc:
                if not job.ended:
                    log.exception("job %s: Ray error", job_id)
                    why = self._down or f"the Ray cluster failed the job: {type(exc).__name__}: {str(exc)[:300]}"
                    self._end(job, Failed(job_id=job_id, code=Code.ENGINE_FAILURE, message=why))
            return

    async def _stream(self, job: _Job, response: Any) -> Event | None:
        """Read one run's stream to its close; the job's end, which the caller tells only now.

        The replica yields the result and then returns: told at once, a client's next job
        could reach the router while the replica still counts the last one as running
        (`max_ongoing_requests` is 1), and the router would send it to another replica,
        which loads the model again.  Told after the close, the replica that holds the
        model is free for it."""
        end: Event | None = None
        try:
            async for batch in response:
                for item in batch:
                    end = self._item(job, item) or end
        except Exception:
            if end is None:
                raise
            log.warning("job %s: its Ray stream broke after the job ended; the end stands", job.request.job_id, exc_info=True)
        return end

    def _item(self, job: _Job, item: tuple) -> Event | None:
        """One streamed item -> one event; a terminal one is returned, not posted."""
        job_id = job.request.job_id
        kind = item[0]
        if kind == "started":
            stats = item[2]
            log.info("job %s runs on Ray replica %s; before it: %d job(s), %d still running, %d cancelled, "
                     "%d step(s) run after a cancel", job_id, item[1], stats["jobs"], stats["threads"], stats["cancelled"],
                     stats["steps_after_cancel"])
        elif kind == "progress":
            self.post(Progressed(job_id=job_id, stage=item[1], step=item[2], total=item[3]))
        elif kind == "load_started":
            self.post(LoadStarted(job_id=job_id, model=item[1]))
        elif kind == "load_ended":
            self.post(LoadEnded(job_id=job_id, model=item[1], device=item[2]))
        elif kind == "succeeded":
            body = item[1]
            output = body["output"]
            return Succeeded(job_id=job_id, output=output, engine=body["engine"], device=body["device"], notes=output.notes)
        elif kind == "failed":
            return Failed(job_id=job_id, code=item[1], message=item[2])
        elif kind == "cancelled":
            return Cancelled(job_id=job_id)
        return None


@dataclass
class _Job:
    request: JobRequest
    task: asyncio.Task[None] | None = None
    response: Any = None  # ray.serve.handle.DeploymentResponseGenerator
    cancelled: bool = False
    ended: bool = False
