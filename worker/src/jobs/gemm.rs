//! What the custom candle ops (recurrent layers, convolutions, the bag sum) share: one checked
//! entry to the `gemm` crate (slices and strides in, bounds asserted, single-threaded: the ops
//! split their work over threads themselves) and the view of a contiguous tensor's storage.

use candle_core::Layout;

/// The part of a storage slice a contiguous layout covers; `what` names the tensor in the error.
pub(crate) fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// `dst (m x n) = [dst +] lhs (m x k) * rhs (k x n)`, each given by its row and column strides.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn gemm<T: Copy + 'static>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: &[T],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[T],
    (rhs_rs, rhs_cs): (usize, usize),
    one: T,
    zero: T,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Bounds: the furthest element each operand is read or written at must lie in its slice.
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols.max(1) - 1) * cs;
    assert!(last(m, n, dst_rs, dst_cs) < dst.len(), "gemm dst out of bounds");
    if k > 0 {
        assert!(last(m, k, lhs_rs, lhs_cs) < lhs.len(), "gemm lhs out of bounds");
        assert!(last(k, n, rhs_rs, rhs_cs) < rhs.len(), "gemm rhs out of bounds");
    }
    // SAFETY: the asserts above keep every access inside the three slices, `dst` is borrowed
    // mutably and cannot alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { one } else { zero },
            one,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
