"""The etcd store: objects, statuses, events and watches. Public face of the package::

    from controller.store import Store, ApplyResult, Change, WatchEvent, ConflictError, ...

Errors (tree in ``controller.store.errors``)::

    StoreError
    ├── ConflictError(kind, name, expected, actual)
    ├── TooLargeError(kind, name, size, limit)
    ├── PartialApplyError(written, not_written, cause, uncertain)
    ├── NotFoundError(kind, name)
    ├── StoreUnavailable
    ├── RevisionCompacted(revision)
    └── RestoreRefused               (backup: the store is not empty, or the backup is unreadable)
"""

from controller.store._etcd import TlsFiles
from controller.store.apply import FEW_PER_KIND, ApplyResult, Change, Prefetch
from controller.store.audit import MAX_OBJECTS_PER_RECORD, AuditLog, AuditRecord
from controller.store.backup import RestoreRefused, restore_backup, take_backup
from controller.store.codec import EVENTS, ROOT, SPECS, STATUS, kind_prefix, spec_key, status_key
from controller.store.errors import (
    ConflictError,
    NotFoundError,
    PartialApplyError,
    RevisionCompacted,
    StoreError,
    StoreUnavailable,
    TooLargeError,
    UndecodableError,
)
from controller.store.identity import Identities, SessionRecord, TokenRecord
from controller.store.leases import Leases
from controller.store.paging import Page
from controller.store.store import Selector, Snapshot, Store
from controller.store.watch import WatchEvent

__all__ = [
    "EVENTS",
    "FEW_PER_KIND",
    "MAX_OBJECTS_PER_RECORD",
    "ROOT",
    "SPECS",
    "STATUS",
    "ApplyResult",
    "AuditLog",
    "AuditRecord",
    "Change",
    "ConflictError",
    "Identities",
    "Leases",
    "NotFoundError",
    "Page",
    "PartialApplyError",
    "Prefetch",
    "RestoreRefused",
    "RevisionCompacted",
    "Selector",
    "SessionRecord",
    "Snapshot",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TlsFiles",
    "TokenRecord",
    "TooLargeError",
    "UndecodableError",
    "WatchEvent",
    "kind_prefix",
    "restore_backup",
    "spec_key",
    "status_key",
    "take_backup",
]
