"""The ``nacz`` command line: gzip/xz/zstd manners over the library in ``codec``.

Exit codes: 0 success; 1 error (including usage errors); 2 warning (a file was skipped,
e.g. unknown suffix); 130 interrupted by SIGINT, 143 by SIGTERM. With several files,
nacz continues past a failing one and exits with the most severe code (1 beats 2).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import click

from . import __version__
from .errors import NaczError

SUFFIX = ".nc"
EXIT_OK, EXIT_ERROR, EXIT_WARNING = 0, 1, 2
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


class Terminated(BaseException):
    """SIGTERM, turned into an exception so output cleanup runs as for Ctrl-C."""


@dataclass
class Settings:
    stdout: bool
    output: str | None
    force: bool
    remove: bool
    quiet: bool
    verbose: int
    threads: int
    model: str | None
    streams: int | None = None
    window: int | None = None
    level: int | None = None
    jobs: int = 1
    ray: bool = False
    ray_address: str | None = None
    block_size: int | None = None
    range: tuple[int, int | None] | None = None
    backend: str | None = None
    device: str | None = None
    dtype: str | None = None


def _err(msg: str) -> None:
    click.echo(f"nacz: {msg}", err=True)


class _Status:
    """Worst exit status over several files: an error beats a warning beats success."""

    def __init__(self):
        self.code = EXIT_OK

    def error(self, name: str, msg: str) -> None:
        _err(f"{name}: {msg}")
        self.code = EXIT_ERROR

    def warn(self, name: str, msg: str) -> None:
        _err(f"{name}: {msg}")
        if self.code == EXIT_OK:
            self.code = EXIT_WARNING


class _Progress:
    """Bytes done, speed and ETA on stderr, only when stderr is a terminal."""

    def __init__(self, name: str, total: int, enabled: bool):
        self.name, self.total, self.enabled = name, total, enabled and sys.stderr.isatty()
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, fraction: float) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.25:
            return
        self.last = now
        done = int(self.total * fraction)
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else 0
        sys.stderr.write(f"\r{self.name}: {fraction:6.1%}  {done // 1024} KiB  "
                         f"{rate / 1024:.2f} KiB/s  ETA {int(eta) // 60}:{int(eta) % 60:02d} ")
        sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled and self.last:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _options(s: Settings, progress=None):
    from .codec import Options

    kw = {"model": s.model, "threads": s.threads, "progress": progress}
    for name in ("streams", "window", "level", "block_size", "backend", "device", "dtype"):
        if getattr(s, name) is not None:  # unset: the library's default
            kw[name] = getattr(s, name)
    return Options(**kw)


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """Bytes, with an optional K, M or G suffix (powers of 1024): 65536, 64K, 4M."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in ("K", "M", "G") else ""
    number = t[:len(t) - len(unit)]
    if not number.isdigit():
        raise click.BadParameter(f"{text!r} is not a size (bytes, or with K/M/G)")
    return int(number) * _UNITS[unit]


def _size_option(ctx, param, value):
    return None if value is None else parse_size(value)


def _range_option(ctx, param, value):
    if value is None:
        return None
    start, sep, end = value.partition(":")
    try:
        lo = parse_size(start) if start else 0
        hi = parse_size(end) if end else None
    except click.BadParameter:
        lo = hi = -1
    if not sep or lo < 0 or (hi is not None and hi < lo):
        raise click.BadParameter(f"{value!r}: expected START:END (bytes, END > START; K/M "
                                 "suffixes allowed; an empty END means the end)")
    return lo, hi


def _read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    with open(name, "rb") as f:
        return f.read()


def _input_ok(name: str, status: _Status) -> bool:
    if name == "-":
        return True
    p = Path(name)
    if not p.exists():
        status.error(name, "no such file")
    elif p.is_dir():
        status.warn(name, "is a directory -- ignored")
    elif not p.is_file():
        status.warn(name, "not a regular file -- ignored")
    else:
        return True
    return False


def _plan(name: str, s: Settings, mode: str, status: _Status):
    """Where one input's output goes: a path, None for stdout (or nowhere, when testing),
    or False to skip this input."""
    if not _input_ok(name, status):
        return False
    p = Path(name)
    if mode == "test":
        return None
    if name == "-":
        return s.output or None
    if s.stdout:
        return None
    if s.output:
        return s.output
    if mode == "decompress":
        if not name.endswith(SUFFIX) or len(p.name) <= len(SUFFIX):
            status.warn(name, f"unknown suffix (expected {SUFFIX}) -- ignored")
            return False
        return name[:-len(SUFFIX)]
    if name.endswith(SUFFIX) and not s.force:
        status.warn(name, f"already has {SUFFIX} suffix -- ignored")
        return False
    return name + SUFFIX


def _process(files: tuple[str, ...], s: Settings, mode: str) -> int:
    from . import codec
    from .backends import llama

    llama.set_verbose(max(0, s.verbose - 1))
    if s.verbose:
        from . import native
        _err(f"nacz: SSM kernels {native.ssm_impl()}, llama-cpp-python {llama.version()} "
             f"({llama.cpu_features() or 'no CPU features reported'}), weight buffers "
             f"{llama.WEIGHT_BUFFERS}")
    status = _Status()
    names = list(files) or ["-"]
    if s.output and len(names) > 1:
        raise click.UsageError("-o/--output takes a single input file")
    decompressing = mode in ("decompress", "test")
    for name in names:
        label = "(stdin)" if name == "-" else name
        dest = _plan(name, s, mode, status)
        if dest is False:
            continue
        if dest is not None and name != "-" and os.path.exists(dest) and \
                os.path.samefile(name, dest):
            status.error(name, "input and output are the same file")
            continue
        if name == "-" and decompressing and sys.stdin.isatty() and not s.force:
            status.error(label, "compressed data cannot be read from a terminal")
            continue
        if mode == "compress" and dest is None and sys.stdout.isatty() and not s.force:
            status.error(label, "compressed data not written to a terminal (use -f to force)")
            continue
        if dest is not None and mode != "test" and not s.force and os.path.lexists(dest):
            status.error(name, f"{dest} already exists; use -f to overwrite")
            continue
        started = time.monotonic()
        progress = None
        try:
            total = 0 if name == "-" else os.path.getsize(name)
            progress = _Progress(label, total, not s.quiet and total > 0)
            n_in, n_out = _run_one(name, dest, s, mode, progress)
            progress.clear()
        except NaczError as e:
            if progress:
                progress.clear()
            status.error(label, str(e))
            continue
        except BrokenPipeError:
            raise  # the reader is gone: stop here (entry() exits quietly with 1)
        except OSError as e:
            if progress:
                progress.clear()
            status.error(label, e.strerror or str(e))
            continue
        except Exception as e:  # noqa: BLE001 - a bug must still be one line, exit 1
            if progress:
                progress.clear()
            if s.verbose:
                traceback.print_exc()
            status.error(label, f"internal error: {type(e).__name__}: {e}")
            continue
        if s.remove and name != "-" and dest is not None and mode != "test":
            try:
                os.unlink(name)
            except OSError as e:
                status.error(name, f"output complete, but the input was not removed: "
                                   f"{e.strerror or e}")
        if s.verbose:
            _summary(label, mode, n_in, n_out, time.monotonic() - started)
    return status.code


class _Discard:
    """The output of ``nacz test``."""

    def write(self, data) -> int:
        return len(data)

    def flush(self) -> None:
        pass


def _open_input(name: str):
    return open(name, "rb") if name != "-" else contextlib.nullcontext(sys.stdin.buffer)


@contextlib.contextmanager
def _open_output(dest: str | None, src: str, s: Settings, mode: str):
    """``dest`` None means standard output (nothing, when testing); a file is written
    under a temporary name and renamed when complete (removed on any failure)."""
    from .fileio import atomic_write, copy_metadata

    if mode == "test":
        yield _Discard()
    elif dest is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
    else:
        with atomic_write(Path(dest), overwrite=s.force) as f:
            yield f
        if src != "-":
            copy_metadata(Path(src), Path(dest))


def _run_one(name: str, dest, s: Settings, mode: str, progress) -> tuple[int, int]:
    """Code one input; returns (bytes read, bytes written)."""
    from . import codec, stream

    def bytes_done(n: int) -> None:
        if progress.total:
            progress(min(1.0, n / progress.total))

    parallel = stream.Parallel(s.jobs, s.ray, s.ray_address)
    with _open_input(name) as fin:
        if mode == "compress":
            with _open_output(dest, name, s, mode) as fout:
                return stream.compress_stream(fin, fout, _options(s), parallel, bytes_done)
        if s.range is not None:
            return _decompress_range(name, fin, dest, s, mode, parallel)
        prefix = stream._read_block(fin, 5)
        if stream.is_blocks_file(prefix):
            with _open_output(dest, name, s, mode) as fout:
                n_in, n_out = stream.decompress_stream(fin, fout, _options(s), parallel,
                                                       bytes_done, prefix)
            return n_in, n_out
        # Format version 1: one container, decoded whole.
        data = prefix + fin.read()
        result = codec.decompress(data, _options(s, progress))
        with _open_output(dest, name, s, mode) as fout:
            stream._write(fout, result)
        return len(data), len(result)


def _decompress_range(name, fin, dest, s: Settings, mode: str, parallel) -> tuple[int, int]:
    from . import stream

    if name == "-" or not fin.seekable():
        raise NaczError("--range needs a file (the index is read from its end)")
    size = os.fstat(fin.fileno()).st_size
    if not stream.is_blocks_file(stream._read_block(fin, 5)):
        raise NaczError("--range needs a file of format version 2 (with an index)")
    start, end = s.range
    with _open_output(dest, name, s, mode) as fout:
        n = stream.decompress_range(fin, size, start, end,
                                    fout, _options(s), parallel)
    return size, n


def _summary(label: str, mode: str, n_in: int, n_out: int, seconds: float) -> None:
    orig, comp = (n_in, n_out) if mode == "compress" else (n_out, n_in)
    bpb = 8 * comp / orig if orig else 0.0
    rate = orig / 1024 / seconds if seconds > 0 else 0.0
    verdict = "OK" if mode == "test" else f"{n_in} -> {n_out} bytes"
    _err(f"{label}: {verdict} ({bpb:.3f} bits/byte, {seconds:.1f} s, {rate:.2f} KiB/s)")


def _common(f):
    decorators = [
        click.argument("files", nargs=-1, type=click.Path(allow_dash=True)),
        click.option("-c", "--stdout", "stdout", is_flag=True,
                     help="Write to standard output; keep input files."),
        click.option("-o", "--output", metavar="FILE", help="Write to FILE (one input only)."),
        click.option("-f", "--force", is_flag=True,
                     help="Overwrite existing outputs; allow compressed data on a terminal."),
        click.option("--rm", "remove", is_flag=True,
                     help="Delete the input after the output is complete."),
        click.option("-k", "--keep", is_flag=True, hidden=True,
                     help="Keep input files (the default)."),
        click.option("-q", "--quiet", is_flag=True, help="No progress, no warnings' details."),
        click.option("-v", "--verbose", count=True,
                     help="Summaries; -vv adds llama.cpp's warnings, -vvv its whole log."),
        click.option("-T", "--threads", type=click.IntRange(min=0), default=0,
                     show_default=True, help="CPU threads for the LLM (0 = all cores)."),
        click.option("-j", "--jobs", type=click.IntRange(min=0), default=1, show_default=True,
                     help="Worker processes, each coding whole blocks (0 = one per core); "
                          "never changes the output."),
        click.option("--ray", is_flag=True,
                     help="Code the blocks on a Ray cluster (pip install 'nacz[ray]')."),
        click.option("--ray-address", metavar="ADDRESS",
                     help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)."),
        click.option("--model", metavar="PATH",
                     help="GGUF model (default: $NACZ_MODEL, else SmolLM2-135M); 'none': "
                          "no LLM (the settings of -1)."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


def _settings(kw: dict) -> Settings:
    kw.pop("keep", None)
    kw.pop("files", None)
    return Settings(**kw)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="nacz")
def main() -> None:
    """nacz: lossless neural compression. FILE -> FILE.nc and back; no FILE or '-'
    means standard input to standard output."""


def _levels(f):
    for n in range(9, 0, -1):
        f = click.option(f"-{n}", "level", flag_value=n, hidden=n not in (1, 9),
                         help="Fastest." if n == 1 else "Best ratio." if n == 9 else None)(f)
    return f


@main.command()
@_common
@_levels
@click.option("--streams", type=click.IntRange(1, 4096),
              help="Expert: parallel token streams (llama.cpp: at most 256).")
@click.option("--window", type=click.IntRange(64, 32768), help="Expert: LLM context window.")
@click.option("--block-size", metavar="SIZE", callback=_size_option,
              help="Bytes per independent block (K/M suffixes; default: the level's).")
@click.option("--backend", type=click.Choice(["llama", "torch"]),
              help="LLM backend: llama (llama.cpp, default) or torch (needs nacz[gpu]).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]),
              help="Device of the torch backend (default cpu); cuda: more streams and 4 MiB "
                   "blocks. Decompression needs the same.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]),
              help="Compute dtype of the torch backend (default float32; the half-width ones "
                   "are faster on GPUs). Decompression uses the file's.")
def compress(files, **kw):
    """Compress FILES to FILE.nc. Levels -1 (fastest) ... -9 (best ratio); default -6."""
    if kw.get("device") == "cuda" and kw.get("backend") != "torch":
        raise click.UsageError("--device cuda needs --backend torch")
    if kw.get("dtype") not in (None, "float32") and kw.get("backend") != "torch":
        raise click.UsageError(f"--dtype {kw['dtype']} needs --backend torch")
    return _process(files, _settings(kw), "compress")


@main.command()
@_common
@click.option("--range", "range", metavar="START:END", callback=_range_option,
              help="Write only bytes START..END-1 of the original, decoding only the blocks "
                   "that cover them.")
def decompress(files, **kw):
    """Decompress FILE.nc to FILE."""
    return _process(files, _settings(kw), "decompress")


@main.command("test")
@_common
def test_cmd(files, **kw):
    """Check that FILES decompress correctly; write nothing."""
    return _process(files, _settings(kw), "test")


@main.command()
@click.argument("files", nargs=-1, type=click.Path(allow_dash=True))
@click.option("-v", "--verbose", is_flag=True, help="List every block and segment.")
@click.option("--backends", is_flag=True,
              help="Show the llama.cpp build, CPU features and SSM kernels (C or numba).")
def info(files, verbose, backends):
    """Describe nacz files without decoding them (and/or this installation: --backends)."""
    from .info import describe, describe_backends

    if not files and not backends:
        raise click.UsageError("give FILES to describe, or --backends")
    status = _Status()
    if backends:
        try:
            click.echo(describe_backends())
        except NaczError as e:
            status.error("backends", str(e))
    for name in files:
        try:
            if name == "-" and sys.stdin.isatty():
                raise NaczError("compressed data cannot be read from a terminal")
            data = _read_input(name)
            click.echo(describe(name if name != "-" else "(stdin)", data, verbose))
        except NaczError as e:
            status.error(name, str(e))
        except OSError as e:
            status.error(name, e.strerror or str(e))
        except Exception as e:  # noqa: BLE001 - a bug must still be one line, exit 1
            status.error(name, f"internal error: {type(e).__name__}: {e}")
    return status.code


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Terminated()


def entry(argv: list[str] | None = None) -> None:
    """Console-script entry point: maps outcomes to exit codes, never a traceback for
    expected failures."""
    from .backends.llama import bound_openmp_spinning

    bound_openmp_spinning()  # before llama.cpp (and its OpenMP runtime) is loaded
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        rc = main.main(args=argv, prog_name="nacz", standalone_mode=False)
    except click.UsageError as e:
        e.show()
        rc = EXIT_ERROR
    except click.ClickException as e:
        e.show()
        rc = EXIT_ERROR
    except (KeyboardInterrupt, click.exceptions.Abort):
        _err("interrupted")
        rc = EXIT_SIGINT
    except Terminated:
        _err("terminated")
        rc = EXIT_SIGTERM
    except BrokenPipeError:
        # The reader went away: nothing more to say, and stdout is unusable.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        rc = EXIT_ERROR
    sys.exit(rc if isinstance(rc, int) else EXIT_OK)
