"""Errors every layer may raise, each with the exit code and the meaning the CLI gives it.

- `UserError`: bad input (unknown name, missing data, wrong checkpoint...). The message says what to do; the
  CLI prints it and exits with code 2, and nothing is recorded as a result.
- `Diverged`: a loss became NaN or infinite. Deterministic, so the run is recorded FAILED and never retried.
"""


class UserError(Exception):
    """Bad input. The message says what to do."""

    exit_code = 2


class Diverged(Exception):
    """A loss became NaN or infinite."""
