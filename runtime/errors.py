"""thaw's exceptions. Each message says what a user can act on; the class says which path follows."""


class ThawError(Exception):
    """Base of everything thaw raises on purpose."""


class NotRestorable(ThawError):
    """No usable snapshot for this container (missing, incompatible, corrupt): cold start instead."""


class RestoreFailed(ThawError):
    """The runtime's restore ran and failed; what it left has been cleaned up."""


class CaptureFailed(ThawError):
    """A capture did not produce a snapshot; the store and the source container are unharmed."""


class StoreError(ThawError):
    """The store itself is unusable (permissions, a lock held, a name not found)."""
