//! Says at build time whether the Postgres tests will run, so a skipped run is never silent.

fn main() {
    println!("cargo:rerun-if-env-changed=HIVE_TEST_POSTGRES_URL");
    if std::env::var_os("HIVE_TEST_POSTGRES_URL").is_none() {
        println!(
            "cargo:warning=HIVE_TEST_POSTGRES_URL is not set: the Postgres tests are skipped (memory and SQLite still run)"
        );
    }
}
