"""The one error type that the command-line entry points turn into a one-line message and exit code 2."""


class InputError(ValueError):
    """Bad input from a user: a file, a column, a config field. The message names the file or field.

    Entry points catch it, print ``error: <message>`` on one line to stderr and exit with code 2;
    everything else is a bug and keeps its traceback.
    """

    def __init__(self, where: str, field: str | None, message: str):
        self.where, self.field = where, field
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


def run_main(main) -> None:
    """Run a command's ``main()``: bad input (``InputError``) becomes ``error: <one line>`` on stderr and
    exit code 2, Ctrl-C exit code 130; anything else is a bug and keeps its traceback."""
    import sys

    try:
        code = main()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
