//! Conv2d and ConvTranspose2d (NCHW, square kernels, symmetric padding) on CPU as gemms over
//! kernel taps, as candle custom ops with their own backward.
//!
//! candle's CPU ConvTranspose2d forward is a direct loop without gemm, and the backward passes of
//! both layers are several times slower than PyTorch's (../shared/CANDLE-NOTES.md). Both layers here
//! are one geometry seen from two sides: a "big" image `(C, H, W)` and the "small" grid of kernel
//! positions `(h, w)`; small position `(oy, ox)` and tap `(ky, kx)` meet big pixel
//! `(oy * stride - pad + ky, ox * stride - pad + kx)`. The weight is `(small channels, big
//! channels, k, k)` for both: Conv2d's `(Cout, Cin, k, k)` (`x` big, output small) and
//! ConvTranspose2d's `(Cin, Cout, k, k)` (`x` small, output big; `output_padding` only makes the
//! big side larger: `H = (h - 1) * stride - 2 * pad + k + output_padding`). With `W_t` the
//! `(small, big)` channel matrix of tap `t`, every pass is a sum over taps of one of
//!
//! - gather: `small += W_t * big` (Conv2d forward, ConvTranspose2d backward-data);
//! - scatter: `big += W_t^T * small` (Conv2d backward-data, ConvTranspose2d forward);
//! - weight gradient: `dW_t += small * big^T` (both).
//!
//! Steps of one call:
//! 1. Samples are split over threads in contiguous chunks, and each chunk into blocks of samples
//!    (about 256 gemm columns a small row).
//! 2. A block is copied into layouts with the sample innermost: small `(C, h, w, samples)`, and big
//!    as `stride * stride` phase planes `(py, px, C, H / stride, W / stride, samples)` holding
//!    pixel `(stride * i + py, stride * j + px)`. A tap then reads one phase plane shifted by a
//!    whole number of positions, so a run of small positions on one row (all rows, where the tap
//!    covers full rows) is contiguous on both sides: one gemm with channels as `m` and `k` and
//!    `positions * samples` columns. Taps and rows whose pixel is padding are skipped, so no
//!    multiply touches a padding zero and stride-2 layers do no work on inserted zeros.
//! 3. Where the big side has one or two channels (the first and last DCGAN layers) per-tap gemms
//!    would have `k` or `m` of 1-2; there one im2col matrix `(big channels * k * k, positions *
//!    samples)` per block (padding entries zero) makes a single gemm with `k = C * k * k`.
//! 4. Backward packs `x` and the output gradient once per block and runs the weight gradient and
//!    the backward-data gemms over the same buffers.
//!
//! Each sample's arithmetic is the same in any chunk or block; weight gradients are summed over the
//! threads' partials in thread order, so results are bit-identical run to run for a thread count.
//! Bias is left to candle (`broadcast_add`), whose gradient is a plain sum. f32 and f64 (the tests'
//! precision) on CPU; other devices run candle's own `conv2d` / `conv_transpose2d`.

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Storage, Tensor};

use crate::jobs::gemm::contiguous;

/// A float type the kernels run in.
pub trait Float: Copy + Send + Sync + 'static + std::ops::Add<Output = Self> {
    const ZERO: Self;
    const ONE: Self;
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// One image side and kernel placement: see the module header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    /// Channels on the small side (Conv: Cout, ConvTranspose: Cin).
    small_ch: usize,
    /// Channels on the big side (Conv: Cin, ConvTranspose: Cout).
    big_ch: usize,
    big_h: usize,
    big_w: usize,
    small_h: usize,
    small_w: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

/// One kernel tap `(ky, kx)`: which phase plane of the big side it reads and the rectangle of small
/// positions whose big pixel lies inside the image (padding taps are never visited).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tap {
    /// `ky * k + kx`: the tap's matrix in the tap-major weights.
    index: usize,
    /// `py * stride + px`: the phase plane the tap reads.
    phase: usize,
    /// Phase-plane row and column minus small row and column.
    dy: isize,
    dx: isize,
    rows: Range<usize>,
    cols: Range<usize>,
}

impl Geometry {
    fn small(&self) -> usize {
        self.small_ch * self.small_h * self.small_w
    }

    fn big(&self) -> usize {
        self.big_ch * self.big_h * self.big_w
    }

    /// Rows and columns of one phase plane: big pixel `(y, x)` sits in plane
    /// `(y % stride, x % stride)` at `(y / stride, x / stride)`.
    fn plane_h(&self) -> usize {
        self.big_h.div_ceil(self.stride)
    }

    fn plane_w(&self) -> usize {
        self.big_w.div_ceil(self.stride)
    }

    /// Small position `o` and tap offset `t` meet big pixel `o * stride - pad + t`
    /// `= stride * (o + d) + phase`: returns `(phase, d, small positions inside the image)`.
    fn along(&self, t: usize, big: usize, small: usize) -> (usize, isize, Range<usize>) {
        let s = self.stride as isize;
        let offset = t as isize - self.pad as isize;
        let (d, phase) = (offset.div_euclid(s), offset.rem_euclid(s));
        // Lines of this phase inside the image: stride * i + phase < big.
        let lines = (big as isize - phase + s - 1).div_euclid(s).max(0);
        let lo = (-d).max(0);
        let hi = (lines - d).min(small as isize).max(lo);
        (phase as usize, d, lo as usize..hi as usize)
    }

    /// The taps that touch the image at all, in tap order.
    fn taps(&self) -> Vec<Tap> {
        let mut taps = Vec::with_capacity(self.k * self.k);
        for ky in 0..self.k {
            let (py, dy, rows) = self.along(ky, self.big_h, self.small_h);
            for kx in 0..self.k {
                let (px, dx, cols) = self.along(kx, self.big_w, self.small_w);
                if !rows.is_empty() && !cols.is_empty() {
                    let (index, phase) = (ky * self.k + kx, py * self.stride + px);
                    taps.push(Tap { index, phase, dy, dx, rows: rows.clone(), cols });
                }
            }
        }
        taps
    }
}

/// A block of `samples` samples in the blocked layouts of the module header, and the per-tap gemms
/// over it.
struct Block<'a> {
    geo: &'a Geometry,
    taps: &'a [Tap],
    samples: usize,
    /// One im2col gemm instead of per-tap gemms (see [`Call::narrow`]).
    narrow: bool,
}

impl Block<'_> {
    /// Distance between two small channels: `(h, w, samples)`.
    fn small_plane(&self) -> usize {
        self.geo.small_h * self.geo.small_w * self.samples
    }

    /// Distance between two big channels of one phase: `(plane_h, plane_w, samples)`.
    fn big_plane(&self) -> usize {
        self.geo.plane_h() * self.geo.plane_w() * self.samples
    }

    fn small_len(&self) -> usize {
        self.geo.small_ch * self.small_plane()
    }

    fn big_len(&self) -> usize {
        self.geo.stride * self.geo.stride * self.geo.big_ch * self.big_plane()
    }

    /// Calls `run(tap, small_offset, big_offset, n)` for every run of `n` columns that are
    /// contiguous on both sides: one small row of a tap, or all its rows where the tap covers full
    /// rows of equal width.
    fn runs(&self, mut run: impl FnMut(&Tap, usize, usize, usize)) {
        let g = self.geo;
        let (sw, pw, bb) = (g.small_w, g.plane_w(), self.samples);
        for tap in self.taps {
            let phase_start = tap.phase * g.big_ch * self.big_plane();
            let offsets = |oy: usize| {
                let (py, px) = ((oy as isize + tap.dy) as usize, (tap.cols.start as isize + tap.dx) as usize);
                ((oy * sw + tap.cols.start) * bb, phase_start + (py * pw + px) * bb)
            };
            if tap.cols == (0..sw) && sw == pw {
                let (so, bo) = offsets(tap.rows.start);
                run(tap, so, bo, tap.rows.len() * sw * bb);
            } else {
                for oy in tap.rows.clone() {
                    let (so, bo) = offsets(oy);
                    run(tap, so, bo, tap.cols.len() * bb);
                }
            }
        }
    }

    /// Rows of the im2col matrix: `(big channel, tap)`, the order of the weight's columns.
    fn col_rows(&self) -> usize {
        self.geo.big_ch * self.geo.k * self.geo.k
    }

    /// `cols[(c, tap), small position] = big[c]` at the pixel the tap meets there, 0 on padding.
    fn im2col<T: Float>(&self, big: &[T], cols: &mut Vec<T>) {
        let (bc, kk, sp, bp) = (self.geo.big_ch, self.geo.k * self.geo.k, self.small_plane(), self.big_plane());
        zeroed(cols, self.col_rows() * sp);
        self.runs(|tap, so, bo, n| {
            for c in 0..bc {
                cols[(c * kk + tap.index) * sp + so..][..n].copy_from_slice(&big[bo + c * bp..][..n]);
            }
        });
    }

    /// `big += ` the adjoint of [`Block::im2col`] applied to `cols`.
    fn col2im<T: Float>(&self, cols: &[T], big: &mut [T]) {
        let (bc, kk, sp, bp) = (self.geo.big_ch, self.geo.k * self.geo.k, self.small_plane(), self.big_plane());
        self.runs(|tap, so, bo, n| {
            for c in 0..bc {
                let src = &cols[(c * kk + tap.index) * sp + so..][..n];
                big[bo + c * bp..][..n].iter_mut().zip(src).for_each(|(b, v)| *b = *b + *v);
            }
        });
    }

    /// `small[s] += sum over taps of W_t[s, c] * big[c]`; `weights` from [`Call::weights`]
    /// (gather: not transposed).
    fn gather<T: Float>(&self, weights: &[T], big: &[T], small: &mut [T], cols: &mut Vec<T>) {
        let (sc, bc, sp, bp) = (self.geo.small_ch, self.geo.big_ch, self.small_plane(), self.big_plane());
        if self.narrow {
            self.im2col(big, cols);
            let rows = self.col_rows();
            gemm((sc, sp, rows), small, (sp, 1), true, weights, (rows, 1), cols, (sp, 1));
            return;
        }
        self.runs(|tap, so, bo, n| {
            let w = &weights[tap.index * sc * bc..];
            gemm((sc, n, bc), &mut small[so..], (sp, 1), true, w, (bc, 1), &big[bo..], (bp, 1));
        });
    }

    /// `big[c] += sum over taps of W_t[s, c] * small[s]`; `weights` from [`Call::weights`]
    /// (scatter: transposed).
    fn scatter<T: Float>(&self, weights: &[T], small: &[T], big: &mut [T], cols: &mut Vec<T>) {
        let (sc, bc, sp, bp) = (self.geo.small_ch, self.geo.big_ch, self.small_plane(), self.big_plane());
        if self.narrow {
            let rows = self.col_rows();
            zeroed(cols, rows * sp);
            gemm((rows, sp, sc), cols, (sp, 1), false, weights, (1, rows), small, (sp, 1));
            self.col2im(cols, big);
            return;
        }
        self.runs(|tap, so, bo, n| {
            let w = &weights[tap.index * sc * bc..];
            gemm((bc, n, sc), &mut big[bo..], (bp, 1), true, w, (sc, 1), &small[so..], (sp, 1));
        });
    }

    /// `dW_t[s, c] += small[s] . big[c]` over the block, into `dw` laid out as
    /// [`Call::backward`] sums it (per-tap path: `(k*k, small_ch, big_ch)`; narrow: the weight's).
    fn weight_grad<T: Float>(&self, small: &[T], big: &[T], dw: &mut [T], cols: &mut Vec<T>) {
        let (sc, bc, sp, bp) = (self.geo.small_ch, self.geo.big_ch, self.small_plane(), self.big_plane());
        if self.narrow {
            self.im2col(big, cols);
            let rows = self.col_rows();
            gemm((sc, rows, sp), dw, (rows, 1), true, small, (sp, 1), cols, (1, sp));
            return;
        }
        self.runs(|tap, so, bo, n| {
            let dw = &mut dw[tap.index * sc * bc..];
            gemm((sc, bc, n), dw, (bc, 1), true, &small[so..], (sp, 1), &big[bo..], (1, bp));
        });
    }

    /// NCHW samples `(samples, small_ch, h, w)` into the small blocked layout: writes run along
    /// the samples, reads along one line of each sample.
    fn pack_small<T: Float>(&self, nchw: &[T], small: &mut [T]) {
        let (per, bb) = (self.geo.small(), self.samples);
        assert!(nchw.len() >= per * bb && small.len() >= per * bb, "pack_small out of bounds");
        for (i, dst) in small.chunks_exact_mut(bb).take(per).enumerate() {
            for (b, d) in dst.iter_mut().enumerate() {
                *d = nchw[b * per + i];
            }
        }
    }

    fn unpack_small<T: Float>(&self, small: &[T], nchw: &mut [T]) {
        let (per, bb) = (self.geo.small(), self.samples);
        assert!(nchw.len() >= per * bb && small.len() >= per * bb, "unpack_small out of bounds");
        for (i, src) in small.chunks_exact(bb).take(per).enumerate() {
            for (b, v) in src.iter().enumerate() {
                nchw[b * per + i] = *v;
            }
        }
    }

    /// Calls `visit(big_offset, nchw_offset)` for every big pixel of sample 0: its first sample in
    /// the phase planes and its place in an NCHW sample.
    fn big_pixels(&self, mut visit: impl FnMut(usize, usize)) {
        let g = self.geo;
        let (s, pw, plane) = (g.stride, g.plane_w(), self.big_plane());
        for c in 0..g.big_ch {
            for y in 0..g.big_h {
                for x in 0..g.big_w {
                    let phase = (y % s) * s + x % s;
                    let at = (phase * g.big_ch + c) * plane + ((y / s) * pw + x / s) * self.samples;
                    visit(at, (c * g.big_h + y) * g.big_w + x);
                }
            }
        }
    }

    /// NCHW samples `(samples, big_ch, H, W)` into the phase planes.
    fn pack_big<T: Float>(&self, nchw: &[T], big: &mut [T]) {
        let (per, bb) = (self.geo.big(), self.samples);
        assert!(nchw.len() >= per * bb && big.len() >= self.big_len(), "pack_big out of bounds");
        self.big_pixels(|at, i| {
            for (b, d) in big[at..at + bb].iter_mut().enumerate() {
                *d = nchw[b * per + i];
            }
        });
    }

    fn unpack_big<T: Float>(&self, big: &[T], nchw: &mut [T]) {
        let (per, bb) = (self.geo.big(), self.samples);
        assert!(nchw.len() >= per * bb && big.len() >= self.big_len(), "unpack_big out of bounds");
        self.big_pixels(|at, i| {
            for (b, v) in big[at..at + bb].iter().enumerate() {
                nchw[b * per + i] = *v;
            }
        });
    }
}

/// The shared gemm entry with this type's one and zero.
#[allow(clippy::too_many_arguments)]
fn gemm<T: Float>(
    mnk: (usize, usize, usize),
    dst: &mut [T],
    dst_strides: (usize, usize),
    accumulate: bool,
    lhs: &[T],
    lhs_strides: (usize, usize),
    rhs: &[T],
    rhs_strides: (usize, usize),
) {
    crate::jobs::gemm::gemm(mnk, dst, dst_strides, accumulate, lhs, lhs_strides, rhs, rhs_strides, T::ONE, T::ZERO);
}

/// Contiguous runs of `0..batch`, one per thread.
fn chunks(batch: usize, threads: usize) -> Vec<Range<usize>> {
    let n = threads.clamp(1, batch.max(1));
    let (base, extra) = (batch / n, batch % n);
    let mut start = 0;
    (0..n)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .filter(|r| !r.is_empty())
        .collect()
}

fn threads() -> usize {
    candle_core::utils::get_num_threads().max(1)
}

/// Runs `work(items, out_chunk)` over `0..count` split into contiguous chunks, one per thread;
/// `out` holds `per` values an item.
fn split_over_threads<T: Float, R: Send>(
    count: usize,
    per: usize,
    out: &mut [T],
    work: impl Fn(Range<usize>, &mut [T]) -> R + Sync,
) -> Vec<R> {
    let parts = chunks(count, threads());
    let mut slices = Vec::with_capacity(parts.len());
    let mut rest = out;
    for r in &parts {
        let (mine, tail) = rest.split_at_mut(r.len() * per);
        slices.push(mine);
        rest = tail;
    }
    if parts.len() == 1 {
        return vec![work(parts[0].clone(), slices.remove(0))];
    }
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = parts.into_iter().zip(slices).map(|(r, s)| scope.spawn(move || work(r, s))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}

/// The element-wise sum of `parts` in their order.
fn sum_in_order<T: Float>(parts: Vec<Vec<T>>) -> Vec<T> {
    let mut iter = parts.into_iter();
    let mut total = iter.next().unwrap_or_default();
    for p in iter {
        total.iter_mut().zip(&p).for_each(|(a, b)| *a = *a + *b);
    }
    total
}

/// Which of the two layers, with its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKind {
    Conv { stride: usize, pad: usize },
    Transpose { stride: usize, pad: usize, output_pad: usize },
}

/// The sizes of one call: batch, input and output channels, and the geometry.
#[derive(Debug, Clone, Copy)]
struct Call {
    batch: usize,
    /// Conv: small = output, big = input. Transpose: small = input, big = output.
    geo: Geometry,
    kind: ConvKind,
}

impl Call {
    fn new(kind: ConvKind, x: &[usize], w: &[usize]) -> candle_core::Result<Call> {
        let (&[batch, c_in, h, wd], &[w0, w1, k, k2]) = (x, w) else {
            candle_core::bail!("conv: x must be (batch, channels, h, w) and the weight 4-d, got {x:?} and {w:?}");
        };
        if k != k2 || k == 0 {
            candle_core::bail!("conv: square kernels only, got {k}x{k2}");
        }
        match kind {
            ConvKind::Conv { stride, pad } => {
                if w1 != c_in {
                    candle_core::bail!("conv: weight {w:?} does not take {c_in} input channels");
                }
                if h + 2 * pad < k || wd + 2 * pad < k || stride == 0 {
                    candle_core::bail!("conv: a {k}x{k} kernel does not fit {h}x{wd} with padding {pad}");
                }
                let geo = Geometry {
                    small_ch: w0,
                    big_ch: c_in,
                    big_h: h,
                    big_w: wd,
                    small_h: (h + 2 * pad - k) / stride + 1,
                    small_w: (wd + 2 * pad - k) / stride + 1,
                    k,
                    stride,
                    pad,
                };
                Ok(Call { batch, geo, kind })
            }
            ConvKind::Transpose { stride, pad, output_pad } => {
                if w0 != c_in {
                    candle_core::bail!("conv transpose: weight {w:?} does not take {c_in} input channels");
                }
                if stride == 0 {
                    candle_core::bail!("conv transpose: stride must be positive");
                }
                let side = |n: usize| ((n.max(1) - 1) * stride + k + output_pad).checked_sub(2 * pad);
                let (Some(big_h), Some(big_w)) = (side(h), side(wd)) else {
                    candle_core::bail!("conv transpose: padding {pad} too large for a {k}x{k} kernel");
                };
                let geo =
                    Geometry { small_ch: c_in, big_ch: w1, big_h, big_w, small_h: h, small_w: wd, k, stride, pad };
                Ok(Call { batch, geo, kind })
            }
        }
    }

    fn out_shape(&self) -> Shape {
        let g = self.geo;
        match self.kind {
            ConvKind::Conv { .. } => Shape::from((self.batch, g.small_ch, g.small_h, g.small_w)),
            ConvKind::Transpose { .. } => Shape::from((self.batch, g.big_ch, g.big_h, g.big_w)),
        }
    }

    fn in_split_over_threads(&self) -> usize {
        match self.kind {
            ConvKind::Conv { .. } => self.geo.big(),
            ConvKind::Transpose { .. } => self.geo.small(),
        }
    }

    fn out_split_over_threads(&self) -> usize {
        match self.kind {
            ConvKind::Conv { .. } => self.geo.small(),
            ConvKind::Transpose { .. } => self.geo.big(),
        }
    }

    /// Splits a thread's samples into blocks: enough samples side by side that one small row of a
    /// tap is a gemm of about `ROW_COLUMNS` columns, a multiple of 8 samples where possible.
    fn blocks(&self, samples: Range<usize>) -> impl Iterator<Item = Range<usize>> {
        const ROW_COLUMNS: usize = 256;
        let wanted = (ROW_COLUMNS / self.geo.small_w.max(1)).max(1);
        let block = if wanted >= 8 { wanted / 8 * 8 } else { wanted };
        let end = samples.end;
        samples.step_by(block).map(move |first| first..(first + block).min(end))
    }

    /// A big side of so few channels that per-tap gemms would have `k` or `m` of 1-2: one im2col
    /// gemm per block does better there.
    fn narrow(&self) -> bool {
        const NARROW_BIG_CHANNELS: usize = 2;
        self.geo.big_ch <= NARROW_BIG_CHANNELS
    }

    /// The weight as the block gemms read it: per tap, transposed for scatter; or, on the narrow
    /// path, the weight itself.
    fn weights<T: Float>(&self, w: &[T], scatter: bool) -> Vec<T> {
        if self.narrow() {
            w.to_vec()
        } else {
            tap_major(w, &self.geo, scatter)
        }
    }

    /// Runs `work(block, samples, output)` over the batch's blocks, in parallel over threads;
    /// `out` holds `per` values a sample and `work` sees the part of its block.
    fn each_block<T: Float, S: Send>(
        &self,
        per: usize,
        out: &mut [T],
        init: impl Fn() -> S + Sync,
        work: impl Fn(&Block, Range<usize>, &mut [T], &mut S) + Sync,
    ) -> Vec<S> {
        let taps = self.geo.taps();
        split_over_threads(self.batch, per, out, |samples, out| {
            let mut state = init();
            let start = samples.start;
            for range in self.blocks(samples) {
                let out = &mut out[(range.start - start) * per..(range.end - start) * per];
                let block = Block { geo: &self.geo, taps: &taps, samples: range.len(), narrow: self.narrow() };
                work(&block, range, out, &mut state);
            }
            state
        })
    }

    fn forward<T: Float>(&self, x: &[T], w: &[T]) -> Vec<T> {
        let (ins, outs) = (self.in_split_over_threads(), self.out_split_over_threads());
        let conv = matches!(self.kind, ConvKind::Conv { .. });
        let weights = self.weights(w, !conv);
        let mut out = vec![T::ZERO; self.batch * outs];
        let buffers = || (Vec::new(), Vec::new(), Vec::new());
        self.each_block(outs, &mut out, buffers, |block, samples, out, (small, big, cols)| {
            let x = &x[samples.start * ins..samples.end * ins];
            zeroed(small, block.small_len());
            zeroed(big, block.big_len());
            if conv {
                block.pack_big(x, big);
                block.gather(&weights, big, small, cols);
                block.unpack_small(small, out);
            } else {
                block.pack_small(x, small);
                block.scatter(&weights, small, big, cols);
                block.unpack_big(big, out);
            }
        });
        out
    }

    /// `dx` and `dW` from the output gradient, in one pass over each block.
    fn backward<T: Float>(&self, x: &[T], w: &[T], grad: &[T]) -> (Vec<T>, Vec<T>) {
        let (ins, outs) = (self.in_split_over_threads(), self.out_split_over_threads());
        let conv = matches!(self.kind, ConvKind::Conv { .. });
        let weights = self.weights(w, conv);
        let mut dx = vec![T::ZERO; self.batch * ins];
        let buffers = || (Vec::new(), Vec::new(), Vec::new(), vec![T::ZERO; w.len()]);
        let partials = self.each_block(ins, &mut dx, buffers, |block, samples, dx, (small, big, cols, dw)| {
            let x = &x[samples.start * ins..samples.end * ins];
            let grad = &grad[samples.start * outs..samples.end * outs];
            zeroed(small, block.small_len());
            zeroed(big, block.big_len());
            if conv {
                block.pack_big(x, big);
                block.pack_small(grad, small);
                block.weight_grad(small, big, dw, cols);
                big.fill(T::ZERO);
                block.scatter(&weights, small, big, cols);
                block.unpack_big(big, dx);
            } else {
                block.pack_small(x, small);
                block.pack_big(grad, big);
                block.weight_grad(small, big, dw, cols);
                small.fill(T::ZERO);
                block.gather(&weights, big, small, cols);
                block.unpack_small(small, dx);
            }
        });
        let partials: Vec<Vec<T>> = partials.into_iter().map(|(.., dw)| dw).collect();
        let dw = if partials.is_empty() {
            vec![T::ZERO; w.len()]
        } else if self.narrow() {
            sum_in_order(partials)
        } else {
            from_tap_major(&partials, &self.geo)
        };
        (dx, dw)
    }
}

/// `buf` as `len` zeros, keeping its allocation.
fn zeroed<T: Float>(buf: &mut Vec<T>, len: usize) {
    buf.clear();
    buf.resize(len, T::ZERO);
}

/// The weight `(small_ch, big_ch, k, k)` as one matrix per tap: `(k*k, small_ch, big_ch)`, or
/// `(k*k, big_ch, small_ch)` when `transposed`. Taps are split over threads; each reads the weight
/// once in order.
fn tap_major<T: Float>(w: &[T], g: &Geometry, transposed: bool) -> Vec<T> {
    let (sc, bc, kk) = (g.small_ch, g.big_ch, g.k * g.k);
    let matrix = sc * bc;
    assert_eq!(w.len(), matrix * kk, "weight size");
    let mut out = vec![T::ZERO; w.len()];
    split_over_threads(kk, matrix, &mut out, |taps, out| {
        for s in 0..sc {
            for c in 0..bc {
                let row = &w[(s * bc + c) * kk..][..kk];
                for (local, t) in taps.clone().enumerate() {
                    let at = if transposed { c * sc + s } else { s * bc + c };
                    out[local * matrix + at] = row[t];
                }
            }
        }
    });
    out
}

/// The weight gradient `(small_ch, big_ch, k, k)` from per-thread partials laid out
/// `(k*k, small_ch, big_ch)`: summed in thread order, small channels split over threads.
fn from_tap_major<T: Float>(partials: &[Vec<T>], g: &Geometry) -> Vec<T> {
    let (sc, bc, kk) = (g.small_ch, g.big_ch, g.k * g.k);
    let per = bc * kk;
    let mut out = vec![T::ZERO; sc * per];
    split_over_threads(sc, per, &mut out, |rows, out| {
        for (local, s) in rows.enumerate() {
            for c in 0..bc {
                for t in 0..kk {
                    let at = (t * sc + s) * bc + c;
                    let mut sum = partials[0][at];
                    for p in &partials[1..] {
                        sum = sum + p[at];
                    }
                    out[(local * bc + c) * kk + t] = sum;
                }
            }
        }
    });
    out
}

/// The candle op of one layer; see the module header.
#[derive(Debug, Clone, Copy)]
pub struct ConvOp(pub ConvKind);

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        match self.0 {
            ConvKind::Conv { .. } => "im2col-conv2d",
            ConvKind::Transpose { .. } => "im2col-conv-transpose2d",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let call = Call::new(self.0, l1.dims(), l2.dims())?;
        let storage = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => {
                CpuStorage::F32(call.forward(contiguous(x, l1, "x")?, contiguous(w, l2, "weight")?))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w)) => {
                CpuStorage::F64(call.forward(contiguous(x, l1, "x")?, contiguous(w, l2, "weight")?))
            }
            _ => candle_core::bail!("conv: x and weight must both be f32 or both f64"),
        };
        Ok((storage, call.out_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let call = Call::new(self.0, x.dims(), w.dims())?;
        let (x, w, grad) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let device = x.device();
        let (dx, dw) = match (&*xs, &*ws, &*gs) {
            (
                Storage::Cpu(CpuStorage::F32(xv)),
                Storage::Cpu(CpuStorage::F32(wv)),
                Storage::Cpu(CpuStorage::F32(gv)),
            ) => {
                let (dx, dw) =
                    call.backward(contiguous(xv, xl, "x")?, contiguous(wv, wl, "weight")?, contiguous(gv, gl, "grad")?);
                (Tensor::from_vec(dx, x.dims(), device)?, Tensor::from_vec(dw, w.dims(), device)?)
            }
            (
                Storage::Cpu(CpuStorage::F64(xv)),
                Storage::Cpu(CpuStorage::F64(wv)),
                Storage::Cpu(CpuStorage::F64(gv)),
            ) => {
                let (dx, dw) =
                    call.backward(contiguous(xv, xl, "x")?, contiguous(wv, wl, "weight")?, contiguous(gv, gl, "grad")?);
                (Tensor::from_vec(dx, x.dims(), device)?, Tensor::from_vec(dw, w.dims(), device)?)
            }
            _ => candle_core::bail!("conv: backward needs CPU tensors of one float type"),
        };
        Ok((Some(dx), Some(dw)))
    }
}

/// Conv2d: `x (B, Cin, H, W)`, `w (Cout, Cin, k, k)`.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> candle_core::Result<Tensor> {
    if !x.device().is_cpu() {
        return x.conv2d(w, pad, stride, 1, 1);
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, ConvOp(ConvKind::Conv { stride, pad }))
}

/// ConvTranspose2d: `x (B, Cin, h, w)`, `w (Cin, Cout, k, k)`.
pub fn conv_transpose2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pad: usize,
    output_pad: usize,
) -> candle_core::Result<Tensor> {
    if !x.device().is_cpu() {
        return x.conv_transpose2d(w, pad, output_pad, stride, 1);
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, ConvOp(ConvKind::Transpose { stride, pad, output_pad }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[derive(serde::Deserialize)]
    struct Fixed {
        shape: Vec<usize>,
        data: Vec<f64>,
    }

    fn fixture() -> serde_json::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/conv_torch.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("read conv fixture")).expect("parse fixture")
    }

    fn tensor(case: &serde_json::Value, name: &str) -> Tensor {
        let f: Fixed = serde_json::from_value(case[name].clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        Tensor::from_vec(f.data, f.shape.as_slice(), &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    fn check(case_name: &str, kind: ConvKind) {
        let all = fixture();
        let case = &all[case_name];
        let x = Var::from_tensor(&tensor(case, "x")).unwrap();
        let w = Var::from_tensor(&tensor(case, "weight")).unwrap();
        // The fixture stores 13 significant digits: agreement to 1e-9 is exact up to that rounding.
        let mut out = match kind {
            ConvKind::Conv { stride, pad } => conv2d(x.as_tensor(), w.as_tensor(), stride, pad).unwrap(),
            ConvKind::Transpose { stride, pad, output_pad } => {
                conv_transpose2d(x.as_tensor(), w.as_tensor(), stride, pad, output_pad).unwrap()
            }
        };
        let bias = case.get("bias").filter(|b| !b.is_null()).map(|_| Var::from_tensor(&tensor(case, "bias")).unwrap());
        if let Some(b) = &bias {
            out = out.broadcast_add(&b.as_tensor().reshape((1, (), 1, 1)).unwrap()).unwrap();
        }
        assert!(max_diff(&out, &tensor(case, "output")) < 1e-9, "{case_name} output");
        let grads = out.mul(&tensor(case, "G")).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(grads.get(x.as_tensor()).unwrap(), &tensor(case, "grad_x")) < 1e-9, "{case_name} grad_x");
        assert!(max_diff(grads.get(w.as_tensor()).unwrap(), &tensor(case, "grad_weight")) < 1e-9, "{case_name} grad_w");
        if let Some(b) = &bias {
            assert!(
                max_diff(grads.get(b.as_tensor()).unwrap(), &tensor(case, "grad_bias")) < 1e-9,
                "{case_name} grad_b"
            );
        }
    }

    #[test]
    fn conv_stride_2_matches_pytorch() {
        check("conv_s2", ConvKind::Conv { stride: 2, pad: 2 });
    }

    #[test]
    fn conv_stride_1_matches_pytorch() {
        check("conv_s1", ConvKind::Conv { stride: 1, pad: 2 });
    }

    #[test]
    fn conv_transpose_stride_1_matches_pytorch() {
        check("convt_s1", ConvKind::Transpose { stride: 1, pad: 2, output_pad: 0 });
    }

    #[test]
    fn conv_transpose_stride_2_same_padding_matches_pytorch() {
        check("convt_s2", ConvKind::Transpose { stride: 2, pad: 2, output_pad: 1 });
    }

    /// Deterministic values in [-1, 1).
    fn noise(len: usize, seed: u64) -> Vec<f64> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    /// Direct loops over every (sample, small channel, small pixel, big channel, tap): returns the
    /// output, `dx` and `dW` for output gradient `g`, straight from the definitions.
    fn naive(kind: ConvKind, xs: [usize; 4], ws: [usize; 4], x: &[f64], w: &[f64], g: &[f64]) -> [Vec<f64>; 3] {
        let [batch, c_in, h, wd] = xs;
        let [w0, w1, k, _] = ws;
        let (stride, pad, conv) = match kind {
            ConvKind::Conv { stride, pad } => (stride, pad, true),
            ConvKind::Transpose { stride, pad, .. } => (stride, pad, false),
        };
        // (small channels, small h, small w, big channels, big h, big w)
        let (sc, sh, sw, bc, bh, bw) = match kind {
            ConvKind::Conv { .. } => (w0, (h + 2 * pad - k) / stride + 1, (wd + 2 * pad - k) / stride + 1, c_in, h, wd),
            ConvKind::Transpose { output_pad, .. } => {
                let side = |n: usize| (n - 1) * stride + k + output_pad - 2 * pad;
                (c_in, h, wd, w1, side(h), side(wd))
            }
        };
        let (small_len, big_len) = (batch * sc * sh * sw, batch * bc * bh * bw);
        let (mut out, mut dx, mut dw) =
            (vec![0.0; if conv { small_len } else { big_len }], vec![0.0; x.len()], vec![0.0; w.len()]);
        for b in 0..batch {
            for s in 0..sc {
                for oy in 0..sh {
                    for ox in 0..sw {
                        for c in 0..bc {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let y = (oy * stride + ky) as isize - pad as isize;
                                    let xx = (ox * stride + kx) as isize - pad as isize;
                                    if y < 0 || xx < 0 || y >= bh as isize || xx >= bw as isize {
                                        continue;
                                    }
                                    let small = ((b * sc + s) * sh + oy) * sw + ox;
                                    let big = ((b * bc + c) * bh + y as usize) * bw + xx as usize;
                                    let wi = ((s * bc + c) * k + ky) * k + kx;
                                    // Conv: out = small, x = big. Transpose: x = small, out = big.
                                    let (xi, oi) = if conv { (big, small) } else { (small, big) };
                                    out[oi] += w[wi] * x[xi];
                                    dx[xi] += w[wi] * g[oi];
                                    dw[wi] += x[xi] * g[oi];
                                }
                            }
                        }
                    }
                }
            }
        }
        [out, dx, dw]
    }

    fn assert_close(what: &str, ours: &[f64], want: &[f64]) {
        assert_eq!(ours.len(), want.len(), "{what}: length");
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, (a, b)) in ours.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= 1e-12 * scale, "{what}[{i}]: {a} vs {b}");
        }
    }

    /// Both paths (per-tap and narrow im2col) against [`naive`] in f64, over strides, paddings,
    /// output paddings, odd and non-square sizes, block and thread splits, and the DCGAN layers.
    #[test]
    fn matches_naive_loops() {
        let conv = |stride, pad| ConvKind::Conv { stride, pad };
        let convt = |stride, pad, output_pad| ConvKind::Transpose { stride, pad, output_pad };
        let cases: Vec<(ConvKind, [usize; 4], [usize; 4])> = vec![
            // The DCGAN layers at batch 2.
            (convt(1, 2, 0), [2, 256, 7, 7], [256, 128, 5, 5]),
            (convt(2, 2, 1), [2, 128, 7, 7], [128, 64, 5, 5]),
            (convt(2, 2, 1), [2, 64, 14, 14], [64, 1, 5, 5]),
            (conv(2, 2), [2, 1, 28, 28], [64, 1, 5, 5]),
            (conv(2, 2), [2, 64, 14, 14], [128, 64, 5, 5]),
            // Per-tap path: many blocks and a thread split, odd strides and shapes.
            (conv(1, 1), [37, 3, 5, 6], [4, 3, 3, 3]),
            (conv(2, 0), [3, 4, 7, 7], [5, 4, 3, 3]),
            (conv(3, 1), [2, 3, 10, 8], [2, 3, 4, 4]),
            (conv(1, 0), [2, 3, 4, 4], [3, 3, 1, 1]),
            (conv(2, 3), [2, 3, 5, 5], [4, 3, 5, 5]),
            (convt(2, 1, 1), [19, 3, 4, 5], [3, 4, 3, 3]),
            (convt(2, 1, 0), [3, 4, 5, 5], [4, 3, 4, 4]),
            (convt(3, 2, 2), [2, 3, 4, 3], [3, 5, 5, 5]),
            (convt(1, 0, 0), [2, 3, 3, 3], [3, 4, 2, 2]),
            // Narrow path: one or two big channels.
            (conv(2, 2), [21, 1, 9, 9], [3, 1, 5, 5]),
            (conv(1, 1), [3, 2, 6, 5], [4, 2, 3, 3]),
            (convt(2, 2, 1), [21, 3, 5, 5], [3, 1, 5, 5]),
            (convt(3, 1, 1), [3, 4, 4, 3], [4, 2, 3, 3]),
        ];
        for (seed, (kind, xs, ws)) in cases.into_iter().enumerate() {
            let call = Call::new(kind, &xs, &ws).unwrap();
            let x = noise(xs.iter().product(), 3 * seed as u64);
            let w = noise(ws.iter().product(), 3 * seed as u64 + 1);
            let g = noise(call.out_shape().elem_count(), 3 * seed as u64 + 2);
            let [out, dx, dw] = naive(kind, xs, ws, &x, &w, &g);
            let what = format!("{kind:?} x {xs:?} w {ws:?}");
            assert_close(&format!("{what} out"), &call.forward(&x, &w), &out);
            let (ours_dx, ours_dw) = call.backward(&x, &w, &g);
            assert_close(&format!("{what} dx"), &ours_dx, &dx);
            assert_close(&format!("{what} dw"), &ours_dw, &dw);
        }
    }

    /// The same inputs give bit-identical outputs and gradients run to run.
    #[test]
    fn deterministic() {
        for (kind, xs, ws) in [
            (ConvKind::Transpose { stride: 2, pad: 2, output_pad: 1 }, [37, 8, 7, 7], [8, 6, 5, 5]),
            (ConvKind::Conv { stride: 2, pad: 2 }, [37, 1, 14, 14], [6, 1, 5, 5]),
        ] {
            let call = Call::new(kind, &xs, &ws).unwrap();
            let x: Vec<f32> = noise(xs.iter().product(), 7).into_iter().map(|v| v as f32).collect();
            let w: Vec<f32> = noise(ws.iter().product(), 8).into_iter().map(|v| v as f32).collect();
            let g: Vec<f32> = noise(call.out_shape().elem_count(), 9).into_iter().map(|v| v as f32).collect();
            let first = (call.forward(&x, &w), call.backward(&x, &w, &g));
            for _ in 0..3 {
                assert!((call.forward(&x, &w), call.backward(&x, &w, &g)) == first, "{kind:?} not deterministic");
            }
        }
    }

    /// The op and candle's own conv agree in f32 on the DCGAN shapes' geometry.
    #[test]
    fn matches_candle_in_f32() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 4, 14, 14), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.2, (5, 4, 5, 5), &dev).unwrap();
        let ours = conv2d(&x, &w, 2, 2).unwrap();
        let theirs = x.conv2d(&w, 2, 2, 1, 1).unwrap();
        let diff = ours.sub(&theirs).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
        let wt = Tensor::randn(0f32, 0.2, (4, 5, 5, 5), &dev).unwrap();
        let x7 = Tensor::randn(0f32, 1.0, (3, 4, 7, 7), &dev).unwrap();
        let ours = conv_transpose2d(&x7, &wt, 2, 2, 1).unwrap();
        let theirs = x7.conv_transpose2d(&wt, 2, 1, 2, 1).unwrap();
        assert_eq!(ours.dims(), &[3, 5, 14, 14]);
        let diff = ours.sub(&theirs).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use candle_core::Device;
    use std::time::Instant;

    /// DCGAN layer timings at batch 256, measured as `bench/python/dcgan_torch_bench.py` does:
    /// forward, then the backward of a fixed random output gradient (both inputs' gradients);
    /// median of 5.
    /// `cargo test --release -p sweep-worker conv_layer_times -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn conv_layer_times() {
        let dev = Device::Cpu;
        let cases: [(&str, [usize; 4], [usize; 4], ConvKind); 5] = [
            (
                "convt 256->128 7x7",
                [256, 256, 7, 7],
                [256, 128, 5, 5],
                ConvKind::Transpose { stride: 1, pad: 2, output_pad: 0 },
            ),
            (
                "convt 128->64 s2",
                [256, 128, 7, 7],
                [128, 64, 5, 5],
                ConvKind::Transpose { stride: 2, pad: 2, output_pad: 1 },
            ),
            (
                "convt 64->1 s2",
                [256, 64, 14, 14],
                [64, 1, 5, 5],
                ConvKind::Transpose { stride: 2, pad: 2, output_pad: 1 },
            ),
            ("conv 1->64 s2", [256, 1, 28, 28], [64, 1, 5, 5], ConvKind::Conv { stride: 2, pad: 2 }),
            ("conv 64->128 s2", [256, 64, 14, 14], [128, 64, 5, 5], ConvKind::Conv { stride: 2, pad: 2 }),
        ];
        let (mut fwd_total, mut bwd_total) = (0.0, 0.0);
        for (name, xs, ws, kind) in cases {
            let x = Tensor::randn(0f32, 1.0, &xs, &dev).unwrap();
            let w = Tensor::randn(0f32, 0.1, &ws, &dev).unwrap();
            let op = ConvOp(kind);
            let grad = Tensor::randn_like(&x.apply_op2(&w, op).unwrap(), 0.0, 1.0).unwrap();
            let mut fwd = Vec::new();
            let mut bwd = Vec::new();
            for _ in 0..5 {
                let s = Instant::now();
                let out = x.apply_op2(&w, op).unwrap();
                fwd.push(s.elapsed().as_secs_f64() * 1e3);
                let s = Instant::now();
                let (dx, dw) = op.bwd(&x, &w, &out, &grad).unwrap();
                bwd.push(s.elapsed().as_secs_f64() * 1e3);
                assert!(dx.is_some() && dw.is_some());
            }
            fwd.sort_by(f64::total_cmp);
            bwd.sort_by(f64::total_cmp);
            println!("{name}: fwd {:.1} ms bwd {:.1} ms", fwd[2], bwd[2]);
            fwd_total += fwd[2];
            bwd_total += bwd[2];
        }
        println!("sum: fwd {fwd_total:.1} ms bwd {bwd_total:.1} ms");
    }
}
