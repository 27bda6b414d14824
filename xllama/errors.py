"""One exception type for every user-facing failure, so the CLI can print it cleanly and exit non-zero."""


class XllamaError(Exception):
    """A problem with the user's input or environment: the message says what and where (file, line, key)."""
