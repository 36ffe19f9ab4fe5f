"""A disk that fails for real: a small (or read-only) tmpfs where this process may mount one,
else a child process whose file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored) makes every
write past the limit fail with EFBIG. Tests skip only when neither works."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

# Sets the limit in the child itself (no preexec_fn: forking a threaded pytest is unsafe), then
# runs `python -m <module> args...` or `python -c <code>` as usual.
_LIMITED = """
import resource, runpy, signal, sys
limit = int(sys.argv.pop(1))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
if sys.argv[1] == "-c":
    code = sys.argv.pop(2)
    del sys.argv[1]
    exec(compile(code, "<test>", "exec"), {"__name__": "__main__"})
else:
    module = sys.argv.pop(2)
    del sys.argv[1]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def mount_tmpfs(folder: Path, options: str) -> bool:
    """Mount a tmpfs with `options` ("size=16k", "ro") on `folder`; False when this process
    may not (not root, no CAP_SYS_ADMIN in a container, no mount binary)."""
    mount = shutil.which("mount")
    if mount is None:
        return False
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def umount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True, check=True)


def python(*args: str, file_size_limit: int | None = None) -> list[str]:
    """The command line of `python <args>` (`-m module ...` or `-c code ...`), with files
    limited to `file_size_limit` bytes if given."""
    if file_size_limit is None:
        return [sys.executable, *args]
    return [sys.executable, "-c", _LIMITED, str(file_size_limit), *args]


def file_size_limit_works(folder: Path) -> bool:
    """Whether RLIMIT_FSIZE is honoured here (it is on Linux; some sandboxes ignore it)."""
    target = folder / "fsize-check"
    code = f"with open({str(target)!r}, 'wb') as f: f.write(b'x' * 4096)"
    done = subprocess.run(
        python("-c", code, file_size_limit=1024), capture_output=True, check=False
    )
    target.unlink(missing_ok=True)
    return done.returncode != 0 and b"File too large" in done.stderr
