//! `f64` matrix products on the `gemm` crate: runtime-dispatched AVX2 / FMA /
//! AVX-512 kernels. (It replaced `ndarray`'s matrixmultiply, whose kernels
//! stop at AVX2: 4 lanes instead of 8 on the CPUs the tables are measured
//! on; the five ResNet-18 shapes of `benches/field_conv.rs` went from 45 to
//! 27 ms on one thread, with the im2col and scratch changes of that commit.)
//!
//! This module holds the crate's only `unsafe`: one call into `gemm::gemm`,
//! which takes raw pointers and strides. The safe wrapper checks every slice
//! length against the dimensions first, so the call reads and writes inside
//! the slices only.
#![allow(unsafe_code)]

/// `C = A · B` for row-major `A` (`m × k`), `B` (`k × n`) and `C` (`m × n`),
/// overwriting `C`, on the calling thread.
///
/// # Panics
/// If a slice is shorter than its dimensions say (a programming error: the
/// callers size them from the same dimensions).
pub fn dgemm(a: &[f64], b: &[f64], c: &mut [f64], m: usize, k: usize, n: usize) {
    dgemm_cols(a, b, n, 0, c, m, k, n);
}

/// `C = A · B[:, col0 .. col0 + n]` for row-major `A` (`m × k`), `B` (`k`
/// rows of `b_stride` elements) and `C` (`m × n`, contiguous), overwriting
/// `C`: a block of columns of a wider product, on the calling thread.
///
/// # Panics
/// If a slice is shorter than its dimensions say, or the columns run past
/// `b_stride` (programming errors).
#[allow(clippy::too_many_arguments)]
pub fn dgemm_cols(
    a: &[f64],
    b: &[f64],
    b_stride: usize,
    col0: usize,
    c: &mut [f64],
    m: usize,
    k: usize,
    n: usize,
) {
    let need = |rows: usize, cols: usize| rows.checked_mul(cols).expect("matrix size overflows");
    let b_need = if k == 0 {
        0
    } else {
        need(k - 1, b_stride) + col0 + n
    };
    assert!(
        col0 + n <= b_stride && a.len() >= need(m, k) && b.len() >= b_need && c.len() >= need(m, n),
        "dgemm: slices shorter than {m}×{k} · {k}×{n} (B columns {col0}.. of {b_stride})"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n].iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let (n_i, k_i, bs_i) = (n as isize, k as isize, b_stride as isize);
    let rhs = b[col0..].as_ptr();
    // SAFETY: `c` holds at least `m·n` elements, `a` at least `m·k`, and `b`
    // at least `(k−1)·b_stride + col0 + n` with `col0 + n ≤ b_stride` (checked
    // above). With the row-major strides below (column stride 1; row strides
    // `n`, `k`, `b_stride`) every element `gemm` touches, `dst[i·n + j]`,
    // `lhs[i·k + l]` and `rhs[l·b_stride + j]` = `b[col0 + l·b_stride + j]`
    // for `i < m`, `j < n`, `l < k`, lies inside its slice. `c` is borrowed
    // mutably and does not alias `a` or `b`. `read_dst = false`: `c`'s old
    // contents are not read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n_i,
            false,
            a.as_ptr(),
            1,
            k_i,
            rhs,
            1,
            bs_i,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_naive_product_exactly_on_integers() {
        for (m, k, n) in [
            (1, 1, 1),
            (3, 5, 7),
            (17, 64, 33),
            (64, 576, 100),
            (2, 0, 3),
        ] {
            let a: Vec<f64> = (0..m * k)
                .map(|i| ((i * 37) % 1001) as f64 - 500.0)
                .collect();
            let b: Vec<f64> = (0..k * n)
                .map(|i| ((i * 53) % 999) as f64 - 499.0)
                .collect();
            let mut c = vec![f64::NAN; m * n];
            dgemm(&a, &b, &mut c, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
                    assert_eq!(c[i * n + j], want, "({i},{j}) of {m}×{k}·{k}×{n}");
                }
            }
            // A block of columns.
            if n >= 3 {
                let (col0, w) = (1, n - 2);
                let mut part = vec![f64::NAN; m * w];
                dgemm_cols(&a, &b, n, col0, &mut part, m, k, w);
                for i in 0..m {
                    assert_eq!(part[i * w..(i + 1) * w], c[i * n + col0..i * n + col0 + w]);
                }
            }
        }
    }
}
