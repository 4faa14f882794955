"""Where state lives: one `Store` protocol, an in-process `LocalStore` (the default) and a
`RedisStore`, one codec for tensors <-> bytes (never pickle). Imports nothing else of ours."""

from kv_store.base import BaseStore, Store
from kv_store.codec import DEFAULT_MAX_RECORD_BYTES, decode_record, encode_record
from kv_store.errors import CorruptRecord, RecordTooLarge, StoreError, StoreUnavailable
from kv_store.local import LocalStore
from kv_store.redis_store import RedisStore
from kv_store.state import (
    decode_state,
    encode_state,
    join_state,
    load_state,
    save_state,
    split_state,
)
from kv_store.urls import redact_url, store_kind

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES",
    "BaseStore",
    "CorruptRecord",
    "LocalStore",
    "RecordTooLarge",
    "RedisStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "decode_record",
    "decode_state",
    "encode_record",
    "encode_state",
    "join_state",
    "load_state",
    "redact_url",
    "save_state",
    "split_state",
    "store_kind",
]
