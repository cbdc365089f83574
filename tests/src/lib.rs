//! Helpers shared by the integration tests in `integration/`: a small seeded random
//! generator whose seed a failing run prints. (Per-backend tests use
//! `hive_store::per_backend!`.)

/// The environment variable that replays a randomized test with a given seed.
pub const SEED_ENV: &str = "HIVE_TEST_SEED";

/// A seed for a randomized test: `HIVE_TEST_SEED` when set, else a fresh one. Printed
/// either way, so a failing run can be replayed exactly.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            mix(nanos ^ u64::from(std::process::id()))
        });
    eprintln!("{test}: seed {seed} (replay with {SEED_ENV}={seed})");
    seed
}

/// SplitMix64's output function: a cheap, well-spread hash of one word. Used to derive
/// decisions from (seed, ids…) so they do not depend on which worker runs what when.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A hash of several words, each mixed in turn.
pub fn mix_all(words: &[u64]) -> u64 {
    words.iter().fold(0, |acc, w| mix(acc ^ mix(*w)))
}

/// A deterministic generator (SplitMix64) for test data such as random DAGs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        let z = self.0;
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(z)
    }

    /// A number in `0..n` (`n > 0`); the modulo bias is irrelevant for test data.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent / 100`.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let a: Vec<u64> = (0..5)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..5)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..5)
            .scan(Rng::new(8), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.windows(2).all(|w| w[0] != w[1]));
    }

    #[test]
    fn chance_is_roughly_its_percentage() {
        let mut r = Rng::new(1);
        let hits = (0..10_000).filter(|_| r.chance(5)).count();
        assert!((350..650).contains(&hits), "{hits} of 10000 at 5%");
    }
}
