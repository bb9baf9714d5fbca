"""Blocks on a Ray cluster (``--ray``): actors that load the model once and code blocks.

The same ``workers.Worker`` runs inside each actor, so a block's bytes are the same as
with local workers; each actor checks the model hash and backend fingerprint against the
file header before its first block (a node with another build fails loudly). Ray restarts
a lost actor and retries its block (``MAX_RETRIES``); past that the run fails with one
line, never a hole: results are written in block order by the caller.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future

from .errors import NaczError

MAX_RETRIES = 2  # restarts of a lost actor, and retries of the block it was coding
ACTOR_CPUS = 1  # what each actor reserves; its llama.cpp threads match it


def _ray():
    try:
        import ray
    except ImportError:
        raise NaczError("--ray needs Ray: pip install 'nacz[ray]'") from None
    return ray


def connect(address: str | None = None):
    """Join ``address``, else $RAY_ADDRESS, else start a local Ray (once per process)."""
    ray = _ray()
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        # Ray runs workers at nice 15 by default: nacz's actors are the work itself, and on
        # a busy machine a niced actor barely runs (measured: ~1% of a core under load 14).
        os.environ.setdefault("RAY_worker_niceness", "0")
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR, configure_logging=True)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise NaczError(f"cannot start or reach Ray at {address or 'a local instance'}:"
                            f" {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                            ) from None
    return ray


class _BlockActor:
    """One worker's model and backend, kept between blocks."""

    def __init__(self, job):
        from .workers import Worker
        try:  # a cluster started elsewhere nices its workers (15): undo it where allowed
            os.setpriority(os.PRIO_PROCESS, 0, 0)
        except OSError:
            pass
        self.worker = Worker(job)

    def call(self, method: str, arg=None):
        fn = getattr(self.worker, method)
        return fn() if arg is None else fn(arg)

    def pid(self) -> int:
        return os.getpid()


class RayPool:
    """``parallel.jobs`` actors (0 or 1: one per CPU the cluster has); blocks go to them
    in turn, and the caller bounds how many are in flight."""

    def __init__(self, job_for_threads, parallel, threads: int):  # noqa: ARG002
        ray = connect(parallel.ray_address)
        self.ray = ray
        n = parallel.jobs if parallel.jobs > 1 else int(ray.cluster_resources().get("CPU", 1))
        self.size = max(1, n)
        self.in_flight = 2 * self.size
        actor = ray.remote(num_cpus=ACTOR_CPUS, max_restarts=MAX_RETRIES,
                           max_task_retries=MAX_RETRIES)(_BlockActor)
        self.actors = [actor.remote(job_for_threads(ACTOR_CPUS)) for _ in range(self.size)]
        self._next = 0

    def submit(self, method: str, arg=None) -> Future:
        actor = self.actors[self._next % self.size]
        self._next += 1
        ref = actor.call.remote(method, arg)
        out: Future = Future()

        def done(f: Future) -> None:
            try:
                out.set_result(f.result())
            except BaseException as e:  # noqa: BLE001 - translated for the caller
                out.set_exception(self._translate(e))

        ref.future().add_done_callback(done)
        return out

    def _translate(self, e: BaseException) -> BaseException:
        ray = self.ray
        if isinstance(e, ray.exceptions.RayTaskError):
            cause = getattr(e, "cause", None)
            if isinstance(cause, NaczError):
                return cause
            return NaczError(f"a Ray worker failed: {type(cause).__name__}: {cause}")
        if isinstance(e, ray.exceptions.RayActorError):
            return NaczError(f"a Ray worker was lost and its block could not be coded after "
                             f"{MAX_RETRIES} retries")
        if isinstance(e, ray.exceptions.RayError):
            return NaczError(f"Ray failed: {type(e).__name__}")
        return e

    def close(self, abort: bool = False) -> None:  # noqa: ARG002 - actors go either way
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
