"""Benchmark inputs the project can make on any Debian-like machine, with no download.

Each input is built from files the OS ships (or generated with a fixed seed), so two
machines with the same packages get the same bytes. enwik8 itself cannot be fetched here;
English prose comes from vim's help files instead.

Usage: python bench/inputs.py OUTDIR   (writes every input, prints names, sizes, SHA-256)
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import sys
import sysconfig
import tarfile
from pathlib import Path

VIM_DOCS = sorted(Path("/usr/share/vim").glob("vim*/doc"))


def english(n: int) -> bytes:
    """English prose: vim's user manual (usr_*.txt, 640 KB), then its reference help."""
    if not VIM_DOCS:
        raise SystemExit("bench: vim's help files are not installed (apt install vim-runtime)")
    doc = VIM_DOCS[0]
    files = sorted(doc.glob("usr_*.txt")) + sorted(set(doc.glob("*.txt")) -
                                                    set(doc.glob("usr_*.txt")))
    out = bytearray()
    for p in files:
        if len(out) >= n:
            break
        out += p.read_bytes()
    return bytes(out[:n])


def source(n: int) -> bytes:
    """Python source: the standard library, in a fixed file order."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    out = bytearray()
    for name in ("typing.py", "inspect.py", "argparse.py", "dataclasses.py", "pathlib.py",
                 "subprocess.py", "tarfile.py", "zipfile.py"):
        out += (lib / name).read_bytes()
    return bytes(out[:n])


def json_log(n: int) -> bytes:
    """A repetitive JSON-lines access log, generated with a fixed seed."""
    rnd = random.Random(7)
    users = [f"user{i:03d}" for i in range(40)]
    paths = ["/api/v1/items", "/api/v1/orders", "/login", "/static/app.js", "/api/v1/search"]
    lines, size, t = [], 0, 1_700_000_000.0
    while size < n:
        t += rnd.expovariate(5.0)
        status = rnd.choices([200, 201, 304, 404, 500], [80, 5, 10, 4, 1])[0]
        rec = {"ts": round(t, 3), "level": "ERROR" if status == 500 else "INFO",
               "user": rnd.choice(users), "method": rnd.choice(["GET", "GET", "POST"]),
               "path": rnd.choice(paths), "status": status,
               "ms": round(rnd.lognormvariate(3, 0.6), 1)}
        line = (json.dumps(rec) + "\n").encode()
        lines.append(line)
        size += len(line)
    return b"".join(lines)[:n]


MIXED_TEXT = ["/usr/include/stdlib.h", "/usr/include/stdio.h", "/usr/include/string.h",
              "/usr/include/unistd.h", "/usr/include/signal.h"]
MIXED_BINARY = ["/usr/bin/gzip", "/usr/bin/xz"]


def mixed_tar() -> bytes:
    """A tar archive of C headers, Python sources, vim help and two ELF binaries, with
    fixed metadata (so the archive's bytes depend only on the files' contents)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    members = ([Path(p) for p in MIXED_TEXT] + [lib / "json/decoder.py"]
               + [VIM_DOCS[0] / "usr_02.txt"] + [Path(p) for p in MIXED_BINARY])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for p in members:
            if not p.is_file():
                continue
            data = p.read_bytes()
            info = tarfile.TarInfo(str(p).lstrip("/"))
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def binary_with_text() -> bytes:
    """An ELF executable: code, tables and its own messages and help text."""
    return Path("/usr/bin/gzip").read_bytes()


ALL = {
    "english-1MB.txt": lambda: english(1_000_000),
    "english-100KB.txt": lambda: english(100_000),
    "source-100KB.py": lambda: source(100_000),
    "log-100KB.jsonl": lambda: json_log(100_000),
    "mixed.tar": mixed_tar,
    "gzip.elf": binary_with_text,
}


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.strip().splitlines()[-1])
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, make in ALL.items():
        data = make()
        (out / name).write_bytes(data)
        print(f"{name:20} {len(data):>10,} bytes  sha256 {hashlib.sha256(data).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
