//! BFV parameters: builder, security check against the HE standard, SEAL context.

use pibench_models::fixed::P;
use sealy::{
    BFVEncryptionParametersBuilder, BFVEvaluator, Ciphertext, CoefficientModulusFactory, Context,
    DegreeType, Evaluator, Modulus, SecurityLevel,
};

use super::error::{seal, HeError};
use super::ntt::NttTable;

/// Largest total coefficient-modulus bit count for 128-bit security
/// (HomomorphicEncryption.org standard, ternary secret), per ring degree.
pub fn max_secure_coeff_bits(poly_degree: u64) -> Option<u32> {
    match poly_degree {
        1024 => Some(27),
        2048 => Some(54),
        4096 => Some(109),
        8192 => Some(218),
        16384 => Some(438),
        32768 => Some(881),
        _ => None,
    }
}

/// BFV parameters for one use (linear layers or triples).
///
/// The plaintext modulus is always the protocol field prime [`P`]. The last
/// coefficient prime is SEAL's "special" key-level prime; ciphertexts live at
/// the data level made of the other primes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeParams {
    /// Ring degree `N`.
    pub poly_degree: u64,
    /// Bit sizes of the coefficient primes, the special prime last.
    pub coeff_bits: Vec<i32>,
    /// Statistical security of noise flooding, in bits (per ciphertext).
    pub flood_sigma: u32,
    /// Weights must satisfy `|w| < 2^weight_bound_bits` (noise analysis input).
    pub weight_bound_bits: u32,
    /// Allow parameters below 128-bit security (tests only).
    pub insecure_test_params: bool,
}

impl HeParams {
    /// Parameters for the linear layers: `N = 8192`, `log q = 218` (200 data bits
    /// in four 50-bit primes plus an 18-bit special prime), 128-bit secure.
    pub fn linear() -> Self {
        Self {
            poly_degree: 8192,
            coeff_bits: vec![50, 50, 50, 50, 18],
            flood_sigma: 40,
            weight_bound_bits: 16,
            insecure_test_params: false,
        }
    }

    /// Parameters for Beaver triples (batched encoding): `N = 16384`,
    /// `log q = 290` (240 data bits), 128-bit secure.
    pub fn triples() -> Self {
        Self {
            poly_degree: 16384,
            coeff_bits: vec![60, 60, 60, 60, 50],
            flood_sigma: 40,
            weight_bound_bits: 16,
            insecure_test_params: false,
        }
    }

    /// Small, insecure linear-layer parameters for fast tests (`N = 2048`).
    pub fn insecure_test_linear() -> Self {
        Self {
            poly_degree: 2048,
            coeff_bits: vec![50, 50, 50, 50, 18],
            flood_sigma: 40,
            weight_bound_bits: 16,
            insecure_test_params: true,
        }
    }

    /// Small, insecure triple parameters for fast tests (`N = 4096`).
    pub fn insecure_test_triples() -> Self {
        Self {
            poly_degree: 4096,
            coeff_bits: vec![60, 60, 60, 60, 50],
            flood_sigma: 40,
            weight_bound_bits: 16,
            insecure_test_params: true,
        }
    }

    /// A builder starting from [`HeParams::linear`].
    pub fn builder() -> HeParamsBuilder {
        HeParamsBuilder {
            params: Self::linear(),
        }
    }

    /// Total bits of the coefficient modulus (key level).
    pub fn total_coeff_bits(&self) -> u32 {
        self.coeff_bits.iter().map(|&b| b.max(0) as u32).sum()
    }

    /// Bits of the data-level modulus (all primes but the special one).
    pub fn data_coeff_bits(&self) -> u32 {
        let n = self.coeff_bits.len();
        self.coeff_bits[..n.saturating_sub(1)]
            .iter()
            .map(|&b| b.max(0) as u32)
            .sum()
    }

    /// Checks structure and security.
    pub fn validate(&self) -> Result<(), HeError> {
        let bad = |reason: String| Err(HeError::InvalidParams { reason });
        let Some(max_bits) = max_secure_coeff_bits(self.poly_degree) else {
            return bad(format!(
                "ring degree {} is not a power of two in 1024..=32768",
                self.poly_degree
            ));
        };
        if self.coeff_bits.len() < 2 {
            return bad("need at least one data prime and the special prime".into());
        }
        if let Some(b) = self.coeff_bits.iter().find(|&&b| !(17..=60).contains(&b)) {
            return bad(format!("coefficient prime of {b} bits: must be 17..=60"));
        }
        if self.total_coeff_bits() > max_bits && !self.insecure_test_params {
            return bad(format!(
                "log q = {} exceeds {max_bits}, the 128-bit security bound for N = {} \
                 (set insecure_test_params / --insecure-test-params to allow, tests only)",
                self.total_coeff_bits(),
                self.poly_degree
            ));
        }
        if self.data_coeff_bits() <= 64 + self.flood_sigma {
            return bad(format!(
                "{} data bits leave no room for a 55-bit plaintext and {}-bit flooding",
                self.data_coeff_bits(),
                self.flood_sigma
            ));
        }
        if self.weight_bound_bits == 0 || self.weight_bound_bits > 30 {
            return bad(format!(
                "weight_bound_bits = {} must be 1..=30",
                self.weight_bound_bits
            ));
        }
        Ok(())
    }

    /// Validates and builds the SEAL context.
    pub fn context(&self) -> Result<HeContext, HeError> {
        self.validate()?;
        let degree = DegreeType::try_from(self.poly_degree).map_err(seal("choosing the degree"))?;
        let moduli = CoefficientModulusFactory::build(degree, &self.coeff_bits)
            .map_err(seal("generating coefficient primes"))?;
        let primes: Vec<u64> = moduli.iter().map(Modulus::value).collect();
        let enc = BFVEncryptionParametersBuilder::new()
            .set_poly_modulus_degree(degree)
            .set_coefficient_modulus(moduli)
            .set_plain_modulus_u64(P)
            .build()
            .map_err(seal("building BFV parameters"))?;
        let secure =
            self.total_coeff_bits() <= max_secure_coeff_bits(self.poly_degree).unwrap_or(0);
        let context = if secure {
            Context::new(&enc, true, SecurityLevel::TC128)
        } else {
            Context::new_insecure(&enc, true)
        }
        .map_err(seal("creating the SEAL context"))?;
        let parms_id = context
            .get_first_parms_id()
            .map_err(seal("reading the data-level parms_id"))?;
        let data_primes = primes[..primes.len() - 1].to_vec();
        let data_modulus_bits = data_primes.iter().map(|&q| (q as f64).log2()).sum::<f64>();
        let ntt = data_primes
            .iter()
            .map(|&q| NttTable::new(q, self.poly_degree as usize))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| HeError::InvalidParams {
                reason: "a coefficient prime has no 2N-th root of unity".into(),
            })?;
        // Replies are switched down to the fewest leading primes that keep
        // 80 bits: mod switching scales the (flooded) noise with the modulus
        // and adds a rounding term below 2^14, so the relative budget is kept.
        let mut reply_primes = 0;
        let mut bits = 0.0;
        while reply_primes < data_primes.len() && bits < 80.0 {
            bits += (data_primes[reply_primes] as f64).log2();
            reply_primes += 1;
        }
        Ok(HeContext {
            ntt,
            reply_primes,
            params: self.clone(),
            context,
            data_primes,
            parms_id,
            data_modulus_bits,
        })
    }
}

/// Builder for [`HeParams`].
#[derive(Debug, Clone)]
pub struct HeParamsBuilder {
    params: HeParams,
}

impl HeParamsBuilder {
    /// Ring degree `N`.
    pub fn poly_degree(mut self, n: u64) -> Self {
        self.params.poly_degree = n;
        self
    }
    /// Coefficient prime bit sizes (special prime last).
    pub fn coeff_bits(mut self, bits: Vec<i32>) -> Self {
        self.params.coeff_bits = bits;
        self
    }
    /// Flooding statistical security in bits.
    pub fn flood_sigma(mut self, bits: u32) -> Self {
        self.params.flood_sigma = bits;
        self
    }
    /// Weight magnitude bound `2^bits`.
    pub fn weight_bound_bits(mut self, bits: u32) -> Self {
        self.params.weight_bound_bits = bits;
        self
    }
    /// Allow insecure parameters (tests only).
    pub fn insecure_test_params(mut self, yes: bool) -> Self {
        self.params.insecure_test_params = yes;
        self
    }
    /// Validated parameters.
    pub fn build(self) -> Result<HeParams, HeError> {
        self.params.validate()?;
        Ok(self.params)
    }
}

/// A SEAL context with the facts the kernels need.
pub struct HeContext {
    /// The parameters it was built from.
    pub params: HeParams,
    /// SEAL's context.
    pub context: Context,
    /// Data-level primes.
    pub data_primes: Vec<u64>,
    /// SEAL's parms_id of the data level.
    pub parms_id: Vec<u64>,
    /// `log2` of the data-level modulus.
    pub data_modulus_bits: f64,
    /// NTT tables of the data primes.
    pub ntt: Vec<NttTable>,
    /// Number of primes of the level replies are sent at.
    pub reply_primes: usize,
}

impl std::fmt::Debug for HeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeContext")
            .field("params", &self.params)
            .field("data_primes", &self.data_primes)
            .finish()
    }
}

impl HeContext {
    /// Ring degree.
    pub fn n(&self) -> usize {
        self.params.poly_degree as usize
    }

    /// Serialized size bound of one data-level ciphertext (uncompressed, with headers).
    pub fn max_ciphertext_bytes(&self) -> usize {
        2 * self.n() * self.data_primes.len() * 8 + 256
    }

    /// Bound on the noise of a fresh public-key encryption, in bits: SEAL
    /// samples errors from a normal distribution clipped at 19.2 and a
    /// ternary `u`, so `|e·u + e1 + e2·s| ≤ 2·19·N + 19`, plus `N` for the
    /// rounding of the division by the special prime.
    pub fn fresh_noise_bits(&self) -> f64 {
        let n = self.n() as f64;
        (2.0 * 19.0 * n + 19.0 + n).log2()
    }

    /// Mod-switches a (flooded) reply down to the reply level.
    pub fn switch_to_reply_level(&self, ct: Ciphertext) -> Result<Ciphertext, HeError> {
        let ev = BFVEvaluator::new(&self.context).map_err(seal("creating the evaluator"))?;
        let mut ct = ct;
        while ct.coeff_modulus_size() as usize > self.reply_primes {
            ct = ev
                .mod_switch_to_next(&ct)
                .map_err(seal("switching a reply to a lower level"))?;
        }
        Ok(ct)
    }

    /// Largest noise magnitude that still decrypts, in bits: `log2(q / (2t))`.
    pub fn decryption_noise_bits(&self) -> f64 {
        self.data_modulus_bits - (P as f64).log2() - 1.0
    }
}
