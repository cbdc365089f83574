//! Runs the conformance suite against every backend: `memory::*`, `sqlite::*`, `postgres::*`.

hive_store::conformance_suite!(memory, hive_store::testing::memory);
hive_store::conformance_suite!(sqlite, hive_store::testing::sqlite);
hive_store::conformance_suite!(postgres, hive_store::testing::postgres);
