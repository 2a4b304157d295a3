"""One error base class; the CLI prints its message as ``error: …`` and exits 1.

Every message says what is wrong and what to do, and never holds a secret.
"""


class ReconcilerError(Exception):
    """A failure a user can act on."""


class ConfigError(ReconcilerError):
    """Bad configuration: a file, an environment variable or a flag."""


class SourceError(ReconcilerError):
    """The bucket or folder could not be listed."""


class DatabaseError(ReconcilerError):
    """The database could not be reached or refused a statement."""


class PlanFileError(ReconcilerError):
    """A plan file that cannot be read, is invalid, or was edited."""


class SignatureError(PlanFileError):
    """A plan's signature is missing, wrong, or cannot be checked."""


class SafetyError(ReconcilerError):
    """A safety guard refused the plan (empty source, delete limits)."""


class StalePlanError(ReconcilerError):
    """The database changed since the plan was made."""


class WrongDatabaseError(ReconcilerError):
    """The plan was made for another database."""


class AlreadyAppliedError(ReconcilerError):
    """The plan was applied before."""


class LockTimeoutError(ReconcilerError):
    """Another apply held the lock for longer than the timeout."""


class CatalogueError(ConfigError):
    """A catalogue spec that is malformed, or does not fit the database."""


class WrongCatalogueError(ReconcilerError):
    """A plan made under another catalogue spec than the one configured."""
