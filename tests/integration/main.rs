//! Cross-crate scenarios, driven through hive-client as an app would.
#![allow(clippy::unwrap_used)]

mod sdk;
mod worker;
