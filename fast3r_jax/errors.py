"""The one kind of error that the command line reports as a single line with exit status 2."""


class InputError(ValueError):
    """Bad input from the user (a file, a folder, a field, a flag): the message names the culprit in one line, and
    the command exits with status 2 without a traceback."""
