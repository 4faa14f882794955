"""Errors a store raises; callers catch `StoreUnavailable` to degrade to memoryless operation."""


class StoreError(Exception):
    """Base class of every kv_store error."""


class StoreUnavailable(StoreError):
    """The backing server cannot be reached now.

    The same store object works again once the server is back."""


class CorruptRecord(StoreError, ValueError):
    """Bytes in the store are not a valid record.

    Flipped, truncated, foreign, or written by another version."""


class RecordTooLarge(StoreError, ValueError):
    """A record (or event) is over the configured size limit; nothing was written."""
