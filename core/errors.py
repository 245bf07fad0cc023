"""The one error type a user can act on: the CLI prints its message and exits with code 2."""


class UserError(Exception):
    """Bad input (unknown name, missing data, wrong checkpoint...). The message says what to do."""

    exit_code = 2
