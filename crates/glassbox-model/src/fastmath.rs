//! Branch-free `exp` and `erf` that the compiler vectorises, and a runtime switch to AVX2+FMA
//! code for the loops that use them. libm's scalar `expf`/`erff` made GELU and the attention
//! softmax a third of MiniLM's forward time.

/// `e^x` to ~2 ulp for x in [-87.3, 88.7]; 0 below (so masked softmax weights are exactly 0),
/// e^88.7 above.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let underflow = x < -87.3;
    let x = x.clamp(-87.3, 88.7);
    // Round to nearest by adding and removing 1.5·2^23 (`f32::round` is a libm call that
    // stops vectorisation).
    const SHIFT: f32 = 12_582_912.0;
    let k = (x * LOG2E + SHIFT) - SHIFT;
    let r = x - k * LN2_HI - k * LN2_LO;
    // Taylor series of e^r on |r| <= ln2/2: the degree-7 term is below f32 precision.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let e = f32::from_bits(((k as i32 + 127) as u32) << 23) * p;
    // A select, not a branch: the loop still vectorises.
    if underflow {
        0.0
    } else {
        e
    }
}

/// erf(x) as a rational function of x on [-4, 4] (outside, erf is ±1 in f32), the
/// approximation Eigen and XLA use for f32: no `exp`, absolute error below 5e-7.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    for c in [
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ] {
        p = p * x2 + c;
    }
    let mut q = -1.456_607_2e-5_f32;
    for c in [-2.133_740_6e-4, -1.682_827e-3, -7.373_329e-3, -1.426_474e-2] {
        q = q * x2 + c;
    }
    x * p / q
}

const LANES: usize = 16;

/// Maximum of a slice (−∞ when empty), in 16 independent lanes so that it vectorises
/// (a plain float fold is a serial dependency chain).
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = if *v > *a { *v } else { *a };
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// Sum of a slice in 16 independent lanes (see [`max`]).
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Runs `f`, compiled for AVX2+FMA when the CPU has them. `f` must be `#[inline(always)]`
/// code (closures are) so that it is compiled inside the AVX2 function.
#[inline(always)]
pub fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were detected on this CPU.
            return unsafe { avx2(f) };
        }
    }
    f()
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_accurate() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (super::exp(x), x.exp());
            assert!(((a - b) / b).abs() < 5e-7, "exp({x}) = {a}, want {b}");
            x += 0.0137;
        }
        assert_eq!(super::exp(f32::MIN), 0.0);
    }

    #[test]
    fn erf_is_accurate() {
        let mut x = -6.0f32;
        while x < 6.0 {
            let (a, b) = (super::erf(x), libm::erff(x));
            assert!((a - b).abs() < 5e-7, "erf({x}) = {a}, want {b}");
            x += 0.001;
        }
    }
}
