"""How the ``keystile`` command ends: its exit codes, and which error ends it with which."""

from __future__ import annotations

from keystile._core.errors import BackendError, ConfigError, InvalidInput, NotFound

EXIT_OK, EXIT_BACKEND, EXIT_INPUT, EXIT_NOT_FOUND = 0, 1, 2, 3


class CliError(Exception):
    """Input only the command line checks (its flags), or a backend it probes itself."""

    def __init__(self, message: str, code: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.code = code


def exit_code(error: BaseException) -> int | None:
    """The exit code of an error reported as one line; ``None`` for one that is a bug."""
    if isinstance(error, CliError):
        return error.code
    if isinstance(error, (ConfigError, InvalidInput)):
        return EXIT_INPUT
    if isinstance(error, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, BackendError):
        return EXIT_BACKEND
    return None
