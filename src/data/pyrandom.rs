//! CPython's `random.Random(seed)` as far as the official split script uses it: the Mersenne
//! Twister MT19937 seeded from an integer (`init_by_array` over the 32-bit words of |seed|),
//! `getrandbits`, `_randbelow` (rejection sampling on `n.bit_length()` bits) and `shuffle`
//! (Fisher–Yates from the end). The same seed gives the same order as Python.

const N: usize = 624;
const M: usize = 397;

/// A Mersenne Twister in the state CPython's `random.Random(seed)` starts from.
pub struct PyRandom {
    mt: [u32; N],
    index: usize,
}

impl PyRandom {
    /// `random.Random(seed)` for a non-negative integer seed.
    pub fn new(seed: u64) -> Self {
        let key: Vec<u32> =
            if seed >> 32 == 0 { vec![seed as u32] } else { vec![seed as u32, (seed >> 32) as u32] };
        let mut r = PyRandom { mt: [0; N], index: N };
        r.init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = r.mt[i - 1] ^ (r.mt[i - 1] >> 30);
            r.mt[i] = (r.mt[i] ^ prev.wrapping_mul(1_664_525)).wrapping_add(key[j]).wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                r.mt[0] = r.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = r.mt[i - 1] ^ (r.mt[i - 1] >> 30);
            r.mt[i] = (r.mt[i] ^ prev.wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                r.mt[0] = r.mt[N - 1];
                i = 1;
            }
        }
        r.mt[0] = 0x8000_0000;
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            let prev = self.mt[i - 1] ^ (self.mt[i - 1] >> 30);
            self.mt[i] = 1_812_433_253u32.wrapping_mul(prev).wrapping_add(i as u32);
        }
        self.index = N;
    }

    /// The next 32-bit output (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            for k in 0..N {
                let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % N] & 0x7fff_ffff);
                let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
                self.mt[k] = self.mt[(k + M) % N] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `getrandbits(k)` for `k ≤ 32`.
    pub fn getrandbits(&mut self, k: u32) -> u32 {
        assert!(k <= 32, "getrandbits beyond 32 bits is not needed here");
        if k == 0 { 0 } else { self.next_u32() >> (32 - k) }
    }

    /// `_randbelow(n)`: uniform in `0..n` (`n ≥ 1`, below 2³²).
    pub fn randbelow(&mut self, n: u64) -> u64 {
        assert!((1..=1 << 32).contains(&n), "randbelow range");
        let k = 64 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k) as u64;
            if r < n {
                return r;
            }
        }
    }

    /// `shuffle(x)` in place.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.randbelow(i as u64 + 1) as usize;
            x.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by CPython 3: `r = random.Random(42); [r.getrandbits(32) for _ in range(3)]`,
    /// `random.Random(5).getrandbits(32)`, `random.Random(2**40 + 7).getrandbits(32)` and
    /// `x = list(range(12)); random.Random(42).shuffle(x)`.
    #[test]
    fn matches_cpython() {
        let mut r = PyRandom::new(42);
        let first: Vec<u32> = (0..3).map(|_| r.getrandbits(32)).collect();
        assert_eq!(first, PY_42_FIRST3);
        assert_eq!(PyRandom::new(5).getrandbits(32), PY_5_FIRST);
        assert_eq!(PyRandom::new((1 << 40) + 7).getrandbits(32), PY_BIG_FIRST);
        let mut x: Vec<usize> = (0..12).collect();
        PyRandom::new(42).shuffle(&mut x);
        assert_eq!(x, PY_42_SHUFFLE12);
    }

    const PY_42_FIRST3: [u32; 3] = [2_746_317_213, 478_163_327, 107_420_369];
    const PY_5_FIRST: u32 = 2_675_342_405;
    const PY_BIG_FIRST: u32 = 2_635_837_658;
    const PY_42_SHUFFLE12: [usize; 12] = [7, 5, 2, 8, 9, 6, 11, 3, 4, 0, 1, 10];
}
