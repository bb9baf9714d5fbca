"""Blocks on Ray: a real local Ray instance (started once per test session), real actors,
the same bytes as the local path, and a lost worker that is replaced."""

from __future__ import annotations

import os
import signal

import pytest

ray = pytest.importorskip("ray")

from nacz import codec, stream  # noqa: E402
from nacz.plan import make_plan  # noqa: E402
from nacz.ray_pool import RayPool  # noqa: E402
from nacz.workers import EncodeJob  # noqa: E402

from conftest import os_text, run_nacz  # noqa: E402

DATA = os_text("GPL-3", 4000) + bytes(range(256)) + os_text("Apache-2.0", 1200)
FREE_1K = codec.Options(model="none", block_size=1024)


@pytest.fixture(scope="session")
def local_ray():
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_bytes_equal_the_local_path(local_ray):
    local = stream.compress_bytes(DATA, FREE_1K)
    on_ray = stream.compress_bytes(DATA, FREE_1K, stream.Parallel(jobs=2, ray=True))
    assert on_ray == local
    assert stream.decompress_bytes(local, parallel=stream.Parallel(jobs=2, ray=True)) == DATA


@pytest.mark.timeout(1800)  # the LLM at ~100 tokens/s, three times over
def test_ray_with_the_llm(local_ray):
    data = os_text("GPL-2", 2200)
    opts = codec.Options(level=2, block_size=1024)
    local = stream.compress_bytes(data, opts)
    assert stream.compress_bytes(data, opts, stream.Parallel(jobs=2, ray=True)) == local
    assert stream.decompress_bytes(local, parallel=stream.Parallel(jobs=2, ray=True)) == data


def test_a_lost_worker_is_replaced_and_its_block_retried(local_ray):
    plan = make_plan("none", block_size=1024)
    pool = RayPool(lambda t: EncodeJob(plan, t), stream.Parallel(jobs=2, ray=True), 2)
    try:
        shared = pool.submit("shared").result()  # actor 0
        victim = pool.actors[1]
        pid = ray.get(victim.pid.remote())
        blocks = [DATA[i:i + 1024] for i in range(0, len(DATA), 1024)]
        futures = [pool.submit("encode", (shared, b)) for b in blocks]
        os.kill(pid, signal.SIGKILL)  # actor 1 dies with its blocks queued or running
        coded = [f.result(timeout=600) for f in futures]
        assert ray.get(victim.pid.remote()) != pid  # a new process took over
    finally:
        pool.close()
    local = stream.compress_bytes(DATA, FREE_1K)
    assert b"".join(coded) in local  # the same blocks, back to back, as the local path's


def test_cli_on_an_existing_cluster(local_ray, tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(DATA)
    address = ray.get_runtime_context().gcs_address
    r = run_nacz("compress", "-1", "--block-size", "1K", "--ray", "--ray-address", address,
                 "-j", "2", "-c", src)
    assert r.returncode == 0, r.stderr
    assert r.stdout == stream.compress_bytes(DATA, FREE_1K)
    back = run_nacz("decompress", "--ray", "-c", "-", input=r.stdout,
                    env={"RAY_ADDRESS": address})
    assert back.returncode == 0 and back.stdout == DATA
