"""Finding and running the ``rtrace`` executable (the Swift CLI), which computes every metric."""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import Optional, Sequence

__all__ = ["CommandError", "find_rtrace", "run_rtrace"]


class CommandError(RuntimeError):
    """An ``rtrace`` command failed: ``.argv`` (the command line), ``.returncode``, ``.stderr``."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str):
        self.argv, self.returncode, self.stderr = list(argv), returncode, stderr
        what = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(self.argv[:2]))
        super().__init__(f"{what} failed (exit {returncode}): {stderr.strip() or 'no message'}")

    def __reduce__(self):   # pickled whole (it crosses from a Ray task to the driver)
        return type(self), (self.argv, self.returncode, self.stderr)


def find_rtrace(rtrace_bin: Optional[str] = None) -> str:
    """The absolute path of the rtrace executable: ``rtrace_bin``, else the environment variable
    ``RTRACE_BIN``, else ``rtrace`` on ``PATH``. Raises ``FileNotFoundError`` saying how to get one."""
    tried = []
    for cand, src in ((rtrace_bin, "the rtrace_bin argument"), (os.environ.get("RTRACE_BIN"), "RTRACE_BIN"),
                      ("rtrace", "PATH")):
        if not cand:
            continue
        path = shutil.which(cand) if os.sep not in cand else (cand if os.access(cand, os.X_OK) else None)
        if path:
            return os.path.abspath(path)
        tried.append(f"{cand!r} ({src})")
    raise FileNotFoundError(
        f"no rtrace executable on this node (tried {', '.join(tried)}): build it (swift build -c release "
        f"--product rtrace) and put it on PATH or name it with RTRACE_BIN, on the driver and on every Ray worker")


def run_rtrace(exe: str, args: Sequence[str], replace: Optional[dict] = None) -> str:
    """Runs ``exe args…`` and returns its standard output; raises ``CommandError`` with its standard
    error (in which each key of ``replace`` is replaced by its value: temporary paths by what they hold)."""
    argv = [exe, *map(str, args)]
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        err = p.stderr
        for k, v in (replace or {}).items():
            err = err.replace(k, v)
        raise CommandError(argv, p.returncode, err)
    return p.stdout
