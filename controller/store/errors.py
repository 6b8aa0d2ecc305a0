"""Errors raised by the store. One tree::

    StoreError                         anything the store cannot do; the message says what and where
    ├── ConflictError(kind, name, expected, actual)
    │                                  lost compare-and-swap, or a resourceVersion precondition that
    │                                  does not hold; nothing of that write happened → re-read, retry
    ├── TooLargeError(kind, name, size, limit)
    │                                  one object's JSON cannot fit in an etcd request; nothing written
    ├── PartialApplyError(written, not_written, cause)
    │                                  a batched apply failed after its first batch committed
    ├── NotFoundError(kind, name)      the object does not exist
    ├── UndecodableError(kind, name)   the stored value is not a valid object (planted with etcdctl,
    │                                  written by another version); lists skip it, delete removes it
    ├── StoreUnavailable               etcd unreachable or timed out (gRPC UNAVAILABLE / DEADLINE,
    │                                  aetcd ConnectionFailedError / ConnectionTimeoutError)
    └── RevisionCompacted(revision)    a read or watch asked for history etcd has compacted away
                                       (the watch handles it itself by re-listing)

Revisions in ``expected`` / ``actual`` are etcd mod_revisions; 0 means "does not exist".
"""

from __future__ import annotations

ObjectRef = tuple[str, str]  # (kind, name)


class StoreError(Exception):
    """Base of every store error."""


class ConflictError(StoreError):
    def __init__(self, kind: str, name: str, expected: int, actual: int | None, detail: str = "") -> None:
        self.kind, self.name, self.expected, self.actual = kind, name, expected, actual
        want = "it not to exist" if expected == 0 else f"resourceVersion {expected}"
        if actual is None:
            found = "a concurrent change"
        elif actual == 0:
            found = "it does not exist"
        else:
            found = f"resourceVersion {actual}"
        super().__init__(
            f"conflict on {kind}/{name}: expected {want}, found {found}"
            f"{'; ' + detail if detail else ''} — someone else changed it; re-read and retry"
        )


class TooLargeError(StoreError):
    def __init__(self, kind: str, name: str, size: int, limit: int) -> None:
        self.kind, self.name, self.size, self.limit = kind, name, size, limit
        super().__init__(
            f"{kind}/{name} is {size} bytes as JSON, over the {limit}-byte limit of one object "
            "(and of one etcd request); make the object smaller"
        )


class PartialApplyError(StoreError):
    """``written`` committed; ``not_written`` did not; ``uncertain`` is the batch whose outcome is
    unknown because etcd stopped answering while it was being committed (empty otherwise)."""

    def __init__(
        self,
        written: tuple[ObjectRef, ...],
        not_written: tuple[ObjectRef, ...],
        cause: StoreError,
        uncertain: tuple[ObjectRef, ...] = (),
    ) -> None:
        self.written, self.not_written, self.cause, self.uncertain = written, not_written, cause, uncertain

        def names(refs: tuple[ObjectRef, ...]) -> str:
            shown = ", ".join(f"{k}/{n}" for k, n in refs[:10])
            return shown + (f" and {len(refs) - 10} more" if len(refs) > 10 else "")

        msg = (
            f"apply was only partly written: {len(written)} object(s) written ({names(written)}), "
            f"{len(not_written)} not written ({names(not_written)})"
        )
        if uncertain:
            msg += f", {len(uncertain)} unknown ({names(uncertain)})"
        super().__init__(f"{msg}; cause: {cause}. Re-run the apply to converge.")


class NotFoundError(StoreError):
    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name
        super().__init__(f"{kind}/{name} not found")


class UndecodableError(StoreError):
    def __init__(self, kind: str, name: str, problem: str) -> None:
        self.kind, self.name = kind, name
        super().__init__(
            f"{kind}/{name} is stored but does not decode ({problem[:200]}); delete it (virtplane delete "
            f"{kind.lower()}/{name}) and apply it again"
        )


class StoreUnavailable(StoreError):
    """etcd could not be reached (or did not answer in time)."""


class RevisionCompacted(StoreError):
    def __init__(self, revision: int) -> None:
        self.revision = revision
        super().__init__(f"etcd history before revision {revision} was compacted")
