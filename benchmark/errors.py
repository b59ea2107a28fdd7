"""Errors the command line turns into a clear message and exit status 2."""


class UsageError(Exception):
    """Bad input from the user (suite file, names, data, submission): the message says what to do."""


class DataError(UsageError):
    """A dataset file or directory is missing or malformed."""
