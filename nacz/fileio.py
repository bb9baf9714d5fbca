"""Safe output files: written under a temporary name, renamed into place when complete.

An interrupted or failed write never leaves a partial file under the final name, and never
removes the temporary file's directory entry late: cleanup runs on every exception,
KeyboardInterrupt included.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import NaczError


@contextmanager
def atomic_write(path: Path, overwrite: bool):
    """Yield a binary file object; on success it becomes ``path`` atomically."""
    path = Path(path)
    if not overwrite and os.path.lexists(path):
        raise NaczError(f"{path} already exists; use -f to overwrite")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".nacz-tmp",
                               dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if not overwrite and os.path.lexists(path):  # appeared while we worked
            raise NaczError(f"{path} already exists; use -f to overwrite")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def copy_metadata(src: Path, dst: Path) -> None:
    """Give the output the input's permission bits and modification time, as gzip does."""
    st = os.stat(src)
    try:
        os.chmod(dst, st.st_mode & 0o7777)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    except OSError:
        pass  # best effort, like gzip: the data is what matters
