//! Hive's cross-crate integration tests live in `integration/`; this library is empty.
