"""Workers that code whole blocks: in this process, in N processes (-j), or on Ray.

A ``Worker`` holds one process's model and backend (built once, on first use) and codes
blocks with ``codec.encode_block``/``codec.decode_block``, whatever runs it. Every worker
checks, before its first block, that it computes the model exactly as the file header
says (model hash and backend fingerprint): a worker on another machine or build fails
loudly instead of writing blocks another decoder could not read. Results come back in
block order (``ordered``), with a bounded number of blocks in flight.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Iterable, Iterator

from . import backends, blockparams, codec, container
from .blockfile import write_block
from .container import Container
from .errors import IntegrityError, MismatchError, NaczError
from .plan import Plan


@dataclass(frozen=True)
class EncodeJob:
    plan: Plan
    threads: int  # llama.cpp threads of this worker


@dataclass(frozen=True)
class DecodeJob:
    shared: dict | None  # the file header's shared settings (None: no neural block)
    model: str | None  # --model / $NACZ_MODEL as given
    threads: int


class Worker:
    """One process's block coder."""

    def __init__(self, job: EncodeJob | DecodeJob):
        self.job = job
        self._coding: codec.Coding | None = None
        self._fingerprint: str | None = None

    # -- compression ----------------------------------------------------------------------
    def shared(self) -> dict:
        """The settings every block of this plan shares, as this worker computes them
        (the file header; the fingerprint is computed here once)."""
        plan = self.job.plan
        coding = self._encoder()
        probe = plan.probe_ensemble(coding.hidden_size)
        fp = coding.fingerprint(probe)
        rt = coding.rt
        p = codec.hparams.NeuralParams(
            model_name=rt.path.name, model_sha256=rt.sha256, model_size=rt.size,
            model_derived=coding.derived, level=plan.level,
            backend_name=codec.NO_BACKEND if plan.llm_free else coding.backend.name,
            backend_version=backends.version(coding.backend),
            device=backends.describe(coding.backend),
            weight_buffers=(None if plan.llm_free or coding.backend.name != codec.llama.NAME
                            else rt.model.weight_buffers), fingerprint=fp,
            cpu=codec.llama.cpu_features(), vocab_size=rt.model.vocab_size,
            start_token=rt.model.start_token, streams=(1,), window=plan.window,
            slide=plan.slide, sinks=plan.sinks, ensemble=probe, coder=dict(codec.CODER_SPEC))
        return blockparams.split(p.to_dict(), probe)[0]

    def _encoder(self) -> codec.Coding:
        if self._coding is None:
            self._coding = codec.build_encoder(self.job.plan, self.job.threads)
        return self._coding

    def encode(self, item: tuple[dict, bytes]) -> bytes:
        """(the file header's shared settings, a block's bytes) -> the coded block."""
        header, data = item
        if self._fingerprint is None:
            mine = self.shared()
            for key in ("model", "backend"):
                a, b = dict(mine[key]), dict(header[key])
                a.pop("cpu", None), b.pop("cpu", None)  # diagnostics only
                if a != b:
                    raise MismatchError(
                        f"this worker (pid {os.getpid()}) computes the {key} differently "
                        f"from the file header ({a} vs {b}); use the same model and "
                        "llama-cpp-python build on every worker")
            self._fingerprint = header["backend"]["fingerprint"]

        def serialize(c: Container) -> bytes:
            if c.params is not None:
                c = replace(c, params=blockparams.split(c.params)[1])
            return write_block(c)

        return codec.encode_block(self._encoder(), self.job.plan, data, serialize,
                                  fingerprint=self._fingerprint)

    # -- decompression --------------------------------------------------------------------
    def _decoder(self) -> codec.Coding:
        if self._coding is None:
            job = self.job
            p = blockparams.parse_shared(job.shared)
            self._coding = codec.build_decoder(
                p, codec.Options(model=job.model, threads=job.threads),
                blockparams.probe_spec_of(job.shared))
        return self._coding

    def decode(self, c: Container) -> bytes:
        """A block's original bytes, checked against the block's checksum."""
        coding = p = ensemble = None
        if c.params is not None:
            p = blockparams.parse_block(self.job.shared, c.params)
            codec.check_block(p, c)
            coding = self._decoder()
            ensemble = codec.check_ensemble(coding, p)
        out = codec.decode_block(coding, p, c, None, ensemble)
        if len(out) != c.orig_len or container.checksum(out) != c.checksum:
            raise IntegrityError("does not match its checksum")
        return out


# -- running workers --------------------------------------------------------------------
def _done(fn, *args) -> Future:
    f: Future = Future()
    try:
        f.set_result(fn(*args))
    except Exception as e:  # noqa: BLE001 - handed to the caller through the future
        f.set_exception(e)  # (Ctrl-C, SIGTERM and exits propagate at once)
    return f


class InlinePool:
    """The worker in this process: one block at a time (the default, -j 1)."""

    size = 1
    in_flight = 1  # each block is coded when submitted: hand it on before the next

    def __init__(self, job):
        self.worker = Worker(job)

    def submit(self, method: str, arg=None) -> Future:
        fn = getattr(self.worker, method)
        return _done(fn) if arg is None else _done(fn, arg)

    def close(self, abort: bool = False) -> None:
        pass


_WORKER: Worker | None = None


def _init_process(job) -> None:
    global _WORKER
    # The parent handles Ctrl-C and SIGTERM and stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _WORKER = Worker(job)


def _call(method: str, arg=None):
    fn = getattr(_WORKER, method)
    return fn() if arg is None else fn(arg)


class ProcessPool:
    """N worker processes (spawned: no llama.cpp state crosses a fork), each loading the
    model once."""

    def __init__(self, job, jobs: int):
        self.size = jobs
        self.in_flight = 2 * jobs  # every worker busy, the next block ready for each
        self.executor = ProcessPoolExecutor(
            max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_process, initargs=(job,))

    def submit(self, method: str, arg=None) -> Future:
        return self.executor.submit(_call, method, arg)

    def close(self, abort: bool = False) -> None:
        if abort:
            procs = list((self.executor._processes or {}).values())
            self.executor.shutdown(wait=False, cancel_futures=True)
            for p in procs:  # a block in progress may take minutes: stop it now
                p.terminate()
            for p in procs:
                p.join(5)
        else:
            self.executor.shutdown(wait=True)


def threads_per_worker(threads: int, workers: int) -> int:
    """llama.cpp threads per worker, so that all workers together fit the cores."""
    return max(1, (threads or codec.default_threads()) // max(1, workers))


def ordered(pool, method: str, items: Iterable, in_flight: int | None = None) -> Iterator:
    """Results of ``method`` over ``items``, in order; at most ``in_flight`` submitted and
    not yet consumed (``items`` is read lazily: memory stays bounded)."""
    in_flight = in_flight or pool.in_flight
    pending: collections.deque[Future] = collections.deque()
    it = iter(items)
    while True:
        try:
            item = next(it)
        except StopIteration:
            break
        except NaczError:
            # A damaged input block: the blocks before it are still delivered (and written:
            # on a pipe, everything verified stays written, as with xz and zstd).
            while pending:
                yield pending.popleft().result()
            raise
        pending.append(pool.submit(method, item))
        while len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
