"""Errors the command line turns into a clear message and exit status 2."""


class UsageError(Exception):
    """Bad input from the user (suite file, names, data, submission): the message says what to do."""


class DataError(UsageError):
    """A dataset file or directory is missing or malformed."""


class NotApplicable(Exception):
    """A cell whose attack does not apply to its defense (an EOT attack on a deterministic defense,
    whose expectation is its deployed scores): recorded as not run, with the reason, not as failed."""
