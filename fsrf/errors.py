"""The one error type that the command-line entry points turn into a one-line message and exit code 2."""


class InputError(ValueError):
    """Bad input from a user: a file, a column, a config field. The message names the file or field.

    Entry points catch it, print ``error: <message>`` on one line to stderr and exit with code 2;
    everything else is a bug and keeps its traceback.
    """

    def __init__(self, where: str, field: str | None, message: str):
        self.where, self.field = where, field
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")
