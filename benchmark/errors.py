"""Errors the command line turns into a clear message and exit status 2."""


class UsageError(Exception):
    """Bad input from the user (suite file, names, data, submission): the message says what to do."""


class DataError(UsageError):
    """A dataset file or directory is missing or malformed."""


class NotRun(Exception):
    """A cell cannot run here (a model or files it needs are unavailable offline): it is recorded
    with status 'not_run' and this message as its reason, never replaced by a substitute."""


class NotApplicable(NotRun):
    """A cell whose attack does not apply to its defense (an EOT attack on a deterministic defense,
    whose expectation is its deployed scores): recorded as not run, with the reason, not as failed."""
