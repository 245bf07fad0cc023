"""Errors every layer may raise, each with the exit code and the meaning the CLI gives it.

- `UserError`: bad input (unknown name, missing data, wrong checkpoint...). The message says what to do; the
  CLI prints it and exits with code 2, and nothing is recorded as a result.
- `Diverged`: a loss became NaN or infinite. Deterministic, so the run is recorded FAILED and never retried.
- `EnvironmentFailure` (and what `environment_problem` recognises: out of memory, disk full, a GPU gone):
  the machine failed, not the run. Reported, never recorded as a result; the run resumes next time.
"""


class UserError(Exception):
    """Bad input. The message says what to do."""

    exit_code = 2


class Diverged(Exception):
    """A loss became NaN or infinite."""


class EnvironmentFailure(Exception):
    """The machine, not the run, failed (device missing, out of memory, disk full). Not a result: nothing is
    recorded as FAILED, no retry is spent, and the run folder stays resumable."""


_ENV_ERRNOS = {28: "disk full", 122: "disk quota exceeded", 30: "read-only file system", 5: "I/O error"}
_ENV_MESSAGES = (("out of memory", "out of memory"), ("CUDA error", "GPU error"),
                 ("no CUDA GPUs are available", "no GPU available"), ("NVIDIA driver", "no GPU driver"),
                 ("not compiled with CUDA", "no CUDA in this torch build"), ("CUDA driver", "GPU driver error"),
                 ("cuDNN error", "GPU error"), ("CUBLAS_STATUS", "GPU error"))


def environment_problem(exc: BaseException) -> str | None:
    """What the machine did wrong, if `exc` comes from the machine rather than from the run; None otherwise."""
    if isinstance(exc, EnvironmentFailure):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, OSError) and exc.errno in _ENV_ERRNOS:
        return _ENV_ERRNOS[exc.errno]
    if isinstance(exc, RuntimeError):
        text = str(exc)
        for needle, reason in _ENV_MESSAGES:
            if needle in text:
                return reason
    return None
