"""`pixverse-batch` that SIGKILLs itself at one chosen point: windows no server event marks.

    python tests/crashpoint.py POINT N -- run MANIFEST --out OUT ...

runs `pipeline.cli.main` with one function wrapped so that its N-th call (1-based) ends the
process with SIGKILL (no cleanup, no flush, like a power cut or the OOM killer) at POINT:

* `before-send`: the generate request's intent is committed (trace id, `sent_at`,
  `resend_after`), the request has not left;
* `after-reply`: the gateway accepted the generate and its reply arrived, not yet saved;
* `mid-download`: the first bytes of a result are written (and flushed) to its `.part` file;
* `after-rename`: a downloaded result was renamed to `<job>.mp4`, the job not yet DONE;
* `take-over`: reconcile moved a taken-over result (N=1: to its staging name, before the id
  moves are committed; N=2: to its new job's name, before that is recorded);
* `after-stitch`: a long job's stitched result was placed at `<job>.mp4`, not yet recorded.

A test helper only: the package has no hook for it; the wrapping is done here, from outside.
The `pipeline` imported is whichever PYTHONPATH names (the caller sets it).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

POINTS = ("before-send", "after-reply", "mid-download", "after-rename", "take-over", "after-stitch")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _Counter:
    def __init__(self, nth: int) -> None:
        self.nth, self.calls = nth, 0

    def due(self) -> bool:
        self.calls += 1
        return self.calls == self.nth


def install(point: str, nth: int) -> None:
    import pipeline.client
    import pipeline.download
    import pipeline.longform.run
    import pipeline.reconcile

    counter = _Counter(nth)
    client_class = pipeline.client.PixverseClient
    generate = client_class.generate

    if point == "before-send":

        async def before(self: Any, *args: Any, **kwargs: Any) -> Any:
            if counter.due():
                die()
            return await generate(self, *args, **kwargs)

        client_class.generate = before  # type: ignore[method-assign]
    elif point == "after-reply":

        async def after(self: Any, *args: Any, **kwargs: Any) -> Any:
            submission = await generate(self, *args, **kwargs)
            if counter.due():
                die()
            return submission

        client_class.generate = after  # type: ignore[method-assign]
    elif point == "mid-download":
        writing = pipeline.download._write

        def write(path: Any, out: list[Any], batch: list[bytes]) -> None:
            if not out:
                out.append(_DyingFile(path.open("wb"), counter))
            writing(path, out, batch)

        pipeline.download._write = write
    elif point == "after-rename":
        pipeline.download.place = _after(pipeline.download.place, counter)
    elif point == "take-over":
        pipeline.reconcile.place = _after(pipeline.reconcile.place, counter)
    elif point == "after-stitch":
        pipeline.longform.run.place = _after(pipeline.longform.run.place, counter)
    else:
        raise SystemExit(f"unknown point {point!r}; one of {', '.join(POINTS)}")


def _after(real: Callable[..., Any], counter: _Counter) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if counter.due():
            die()
        return result

    return wrapper


class _DyingFile:
    """A `.part` file that dies after its first write reached the disk."""

    def __init__(self, real: Any, counter: _Counter) -> None:
        self._real, self._counter = real, counter

    def writelines(self, lines: Any) -> None:
        self._real.writelines(lines)
        if self._counter.due():
            self._real.flush()
            os.fsync(self._real.fileno())
            die()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[2] != "--":
        raise SystemExit(__doc__)
    install(argv[0], int(argv[1]))
    from pipeline.cli import main as cli_main

    return cli_main(argv[3:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
