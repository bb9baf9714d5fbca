"""Exceptions that the CLI turns into one-line messages and exit codes."""


class NaczError(Exception):
    """Any failure nacz reports to the user as one line (exit 1)."""


class FormatError(NaczError):
    """The input is not a valid nacz container (foreign, truncated or corrupt)."""


class MismatchError(NaczError):
    """The container is valid but was made with another model or backend build."""


class IntegrityError(NaczError):
    """Decoding finished but the result does not match the stored checksum."""
