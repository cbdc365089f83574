//! Rebuild when a migration is added: `sqlx::migrate!` only watches files that exist.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
