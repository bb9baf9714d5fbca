"""The command line through real subprocesses: files, pipes, manners, errors, signals."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_one_line_error, os_text, run_nacz

TEXT = os_text("GPL-2", 700)


@pytest.fixture
def sample(tmp_path) -> Path:
    p = tmp_path / "sample.txt"
    p.write_bytes(TEXT)
    os.chmod(p, 0o640)
    os.utime(p, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    return p


@pytest.fixture
def compressed(tmp_path, sample) -> Path:
    r = run_nacz("compress", sample)
    assert r.returncode == 0, r.stderr
    return Path(str(sample) + ".nc")


def test_compress_then_decompress_file(tmp_path, sample, compressed):
    assert sample.exists(), "input is kept by default"
    st = compressed.stat()
    assert st.st_mode & 0o777 == 0o640 and st.st_mtime_ns == 1_600_000_000_000_000_000
    sample.rename(tmp_path / "orig.txt")
    r = run_nacz("decompress", compressed)
    assert r.returncode == 0, r.stderr
    assert sample.read_bytes() == TEXT
    assert compressed.exists()
    assert not list(tmp_path.glob("*.nacz-tmp"))


def test_pipeline(sample):
    cmd = (f"cat {sample} | {sys.executable} -m nacz compress | "
           f"{sys.executable} -m nacz decompress | cmp - {sample}")
    r = subprocess.run(cmd, shell=True, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_dash_means_stdin_and_stdout():
    comp = run_nacz("compress", "-", input=TEXT)
    assert comp.returncode == 0 and comp.stdout[:4] == b"\x8fNCZ"
    back = run_nacz("decompress", "-", input=comp.stdout)
    assert back.returncode == 0 and back.stdout == TEXT


def test_stdout_and_output_options(tmp_path, sample, compressed):
    r = run_nacz("decompress", "-c", compressed)
    assert r.returncode == 0 and r.stdout == TEXT
    out = tmp_path / "elsewhere.bin"
    r = run_nacz("decompress", "-o", out, compressed)
    assert r.returncode == 0 and out.read_bytes() == TEXT
    r = run_nacz("compress", "-o", tmp_path / "x.nc", sample, sample)
    assert r.returncode == 1 and b"single input" in r.stderr  # a usage error


def test_refuses_to_overwrite_without_force(sample, compressed):
    before = compressed.read_bytes()
    r = run_nacz("compress", sample)
    assert_one_line_error(r)
    assert "already exists" in r.stderr.decode() and compressed.read_bytes() == before
    r = run_nacz("compress", "-f", sample)
    assert r.returncode == 0


def test_rm_deletes_input_only_after_success(tmp_path, sample):
    r = run_nacz("compress", "--rm", sample)
    assert r.returncode == 0 and not sample.exists()
    r = run_nacz("decompress", "--rm", str(sample) + ".nc")
    assert r.returncode == 0 and sample.read_bytes() == TEXT
    assert not Path(str(sample) + ".nc").exists()


def test_suffix_rules(tmp_path, sample, compressed):
    r = run_nacz("decompress", sample)  # no .nc suffix: warning, skipped
    assert r.returncode == 2 and b"unknown suffix" in r.stderr
    r = run_nacz("compress", compressed)  # already .nc: warning, skipped
    assert r.returncode == 2 and b"already has .nc suffix" in r.stderr


def test_several_files_continue_past_a_failure(tmp_path, sample, compressed):
    bad = tmp_path / "bad.nc"
    bad.write_bytes(b"not a nacz file at all")
    other = tmp_path / "other.txt.nc"
    other.write_bytes(compressed.read_bytes())
    r = run_nacz("decompress", bad, other)
    assert r.returncode == 1
    assert (tmp_path / "other.txt").read_bytes() == TEXT
    assert not (tmp_path / "bad").exists()


def test_test_and_info(compressed):
    r = run_nacz("test", compressed)
    assert r.returncode == 0 and r.stdout == b""
    r = run_nacz("info", compressed)
    out = r.stdout.decode()
    assert r.returncode == 0
    for word in ("original", "bits per byte", "SmolLM2", "neural", "window"):
        assert word in out


@pytest.mark.parametrize("impl", ["c", "numba"])
def test_info_backends_names_the_ssm_kernels(impl):
    from nacz import native

    if impl == "c" and not native.c_available():
        pytest.skip("C SSM library not built here")
    r = run_nacz("info", "--backends", env={"NACZ_SSM_IMPL": impl})
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr
    ssm_line = next(line for line in out.splitlines() if "SSM kernels" in line)
    assert ssm_line.split()[2] == ("C" if impl == "c" else "numba")
    assert "llama-cpp-python" in out and "CPU features" in out
    r = run_nacz("info")  # neither files nor --backends
    assert r.returncode == 1


def test_usage_errors_exit_1():
    r = run_nacz("compress", "--threads", "many")
    assert r.returncode == 1 and b"Traceback" not in r.stderr
    r = run_nacz("frobnicate")
    assert r.returncode == 1


def test_version_and_help():
    assert run_nacz("--version").returncode == 0
    r = run_nacz("compress", "--help")
    assert r.returncode == 0 and b"--rm" in r.stdout


def _with_tty(args, tty_stdin: bool, input_bytes: bytes = b""):
    """Run nacz with a pseudo-terminal as stdout (or stdin)."""
    master, slave = pty.openpty()
    try:
        kw = {"stdin": slave} if tty_stdin else {"stdout": slave, "input": input_bytes}
        return subprocess.run([sys.executable, "-m", "nacz", *args], stderr=subprocess.PIPE,
                              timeout=120, **kw)
    finally:
        os.close(master)
        os.close(slave)


def test_refuses_compressed_data_to_or_from_a_terminal():
    r = _with_tty(["compress"], tty_stdin=False, input_bytes=b"hello")
    assert r.returncode == 1 and b"terminal" in r.stderr
    r = _with_tty(["decompress"], tty_stdin=True)
    assert r.returncode == 1 and b"terminal" in r.stderr


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign", "empty"])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, compressed, damage):
    raw = compressed.read_bytes()
    bad = tmp_path / "damaged.txt.nc"
    if damage == "truncate":
        bad.write_bytes(raw[:len(raw) // 2])
    elif damage == "flip":
        b = bytearray(raw)
        b[len(b) // 2] ^= 0x10
        bad.write_bytes(bytes(b))
    elif damage == "foreign":
        bad.write_bytes(b"%PDF-1.7\n" + bytes(100))
    else:
        bad.write_bytes(b"")
    before = bad.read_bytes()
    r = run_nacz("decompress", bad)
    assert_one_line_error(r)
    assert not (tmp_path / "damaged.txt").exists()
    assert not list(tmp_path.glob("*.nacz-tmp"))
    assert bad.read_bytes() == before


def test_other_model_is_refused_via_cli(tmp_path, other_model, sample):
    r = run_nacz("compress", "--model", other_model, "-o", tmp_path / "m.nc", sample)
    assert r.returncode == 0, r.stderr
    r = run_nacz("decompress", "-c", tmp_path / "m.nc")
    assert_one_line_error(r)
    assert b"smollm2-q8_0.gguf" in r.stderr
    r = run_nacz("decompress", "-c", tmp_path / "m.nc", env={"NACZ_MODEL": str(other_model)})
    assert r.returncode == 0 and r.stdout == TEXT


def test_missing_file_and_directory(tmp_path):
    r = run_nacz("compress", tmp_path / "nope.txt")
    assert_one_line_error(r)
    r = run_nacz("compress", tmp_path)
    assert r.returncode == 2


BIG = os_text("GPL-3", 8000)  # ~1,800 tokens: tens of seconds to code in one stream


@pytest.fixture(scope="module")
def big_compressed(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("big")
    (d / "big.txt").write_bytes(BIG)
    r = run_nacz("compress", "--streams", "1", d / "big.txt")
    assert r.returncode == 0, r.stderr
    return d / "big.txt.nc"


def _default_sigint() -> None:
    """A test run started in the background (`cmd &` in a script) inherits SIGINT ignored,
    and Python, like xz, then leaves it ignored: give the child the default disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("mode", ["compress", "decompress"])
def test_interrupt_leaves_no_partial_output(tmp_path, big_compressed, sig, code, mode):
    if mode == "compress":
        src = tmp_path / "big.txt"
        src.write_bytes(BIG)
    else:
        src = tmp_path / "big.txt.nc"
        src.write_bytes(big_compressed.read_bytes())
    before = src.read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "nacz", mode, "--streams", "1", src]
                            if mode == "compress" else
                            [sys.executable, "-m", "nacz", mode, src], stderr=subprocess.PIPE,
                            preexec_fn=_default_sigint)
    time.sleep(4)  # past start-up, inside the coding loop (which takes far longer)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert b"Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]  # no output, no temp
    assert src.read_bytes() == before


def test_same_input_and_output_is_refused(tmp_path, sample):
    r = run_nacz("compress", "-f", "--rm", "-o", sample, sample)
    assert_one_line_error(r)
    assert sample.read_bytes() == TEXT


def test_broken_pipe_is_quiet(sample):
    cmd = f"{sys.executable} -m nacz compress -c {sample} | (exec 0<&-; sleep 0.5)"
    r = subprocess.run(cmd, shell=True, capture_output=True, timeout=300, executable="/bin/bash")
    assert b"Traceback" not in r.stderr and b"Exception ignored" not in r.stderr
