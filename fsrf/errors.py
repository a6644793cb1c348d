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


import argparse as _argparse  # noqa: E402
import re as _re  # noqa: E402

_PLAIN = _re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def plain_name(value: str, option: str, *, becomes: str) -> str:
    """``value`` when it is a plain name (letters, digits, ``.``, ``_``, ``-``, starting with a letter or
    digit, at most 128 characters), which stays inside the folder it is joined to; an ``InputError``
    naming ``option`` and what the name ``becomes`` otherwise (``../x``, ``a/b``, ``~``, empty)."""
    if not isinstance(value, str) or not _PLAIN.fullmatch(value):
        raise InputError(option, None, f"{value!r} is not a plain name (letters, digits, '.', '_', '-', starting "
                                       f"with a letter or digit, at most 128): it becomes {becomes}")
    return value


class ArgumentParser(_argparse.ArgumentParser):
    """argparse with the entry points' error convention: a bad flag (unknown, missing value, wrong type)
    is one ``error: <message>`` line on stderr and exit code 2, without the usage block (``--help`` has it)."""

    def error(self, message: str):  # argparse's hook for every parse error
        import sys

        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)
