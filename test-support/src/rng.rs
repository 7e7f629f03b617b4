//! Seeded RNGs for randomized tests: the seed comes from an environment variable when
//! it is set, else at random, and is printed so a failure can be replayed.

use rand::rngs::StdRng;
use rand::SeedableRng;

/// A `StdRng` whose seed was printed. Derefs to the `StdRng`: use it through
/// [`rand::Rng`] (`random`, `random_range`).
#[derive(Debug, Clone)]
pub struct SeededRng {
    seed: u64,
    rng: StdRng,
}

impl SeededRng {
    /// Seeded from `$var` if it holds a number, else at random; prints the seed and
    /// how to replay it.
    pub fn from_env(var: &str) -> SeededRng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        println!("RNG seed {seed} (set {var}={seed} to replay)");
        SeededRng::new(seed)
    }

    /// Seeded with `seed`.
    pub fn new(seed: u64) -> SeededRng {
        SeededRng {
            seed,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

impl std::ops::Deref for SeededRng {
    type Target = StdRng;
    fn deref(&self) -> &StdRng {
        &self.rng
    }
}

impl std::ops::DerefMut for SeededRng {
    fn deref_mut(&mut self) -> &mut StdRng {
        &mut self.rng
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn same_seed_same_sequence() {
        let (mut a, mut b) = (SeededRng::new(7), SeededRng::new(7));
        let xs: Vec<u64> = (0..8).map(|_| a.random()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.random()).collect();
        assert_eq!(xs, ys);
        assert_eq!(a.seed(), 7);
    }
}
