//! BatchNorm and LeakyReLU for the DCGAN (the TensorFlow DCGAN tutorial on MNIST) as candle custom
//! ops with their own backward on CPU.
//!
//! candle-nn builds both from generic ops, and on CPU their backward passes are tens of times slower
//! than PyTorch's (../shared/CANDLE-NOTES.md); its BatchNorm also keeps the running statistics as
//! Vars of the VarMap, where the optimizer sees them. Here:
//!
//! - [`leaky_relu`]: `x if x > 0 else slope * x`; its gradient is 1 or `slope` (`slope` at 0, as in
//!   PyTorch).
//! - [`BatchNorm`]: normalises dim 1 of `(B, C, ...)` (BatchNorm1d on `(B, C)`, BatchNorm2d on
//!   `(B, C, H, W)`); gamma and beta are Vars of the caller's VarMap, the running mean and variance
//!   live in the layer.
//!
//! Train-mode BatchNorm is one op on `(x, gamma, beta)`, with `n = B * H * W` values a channel:
//!
//! 1. per channel, mean and biased variance in one pass over `x`: f64 sums of `x - k` and
//!    `(x - k)^2`, `k` the channel's first value (so a mean far from 0 cancels nothing);
//! 2. `out = (x - mean) * gamma / sigma + beta`, `sigma = sqrt(var + eps)`;
//! 3. backward, with `xhat = (x - mean) / sigma`: `dbeta = sum(dy)`, `dgamma = sum(dy * xhat)`,
//!    `dx = gamma / sigma * (dy - mean(dy) - xhat * mean(dy * xhat))`.
//!
//! The op hands the batch statistics to its backward and to the layer (which updates the running
//! statistics, without gradient) through a cell it shares with them. Per-channel sums split the
//! channels over threads, each channel summed by one thread in a fixed order, so results are the same
//! bit for bit whatever the thread count; elementwise passes split the samples. f32 and f64 on CPU;
//! other devices and dtypes run the same formulas as candle ops.

use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, Tensor, WithDType};

use crate::jobs::gemm::contiguous;

/// Below this many values a pass runs on the calling thread: a spawn costs more than it saves.
const PARALLEL_MIN: usize = 1 << 15;

/// Whether `x` takes the custom ops (CPU, f32 or f64) rather than candle's generic ones.
fn fast_path(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// How many threads a pass over `values` values gets.
fn threads_for(values: usize) -> usize {
    if values < PARALLEL_MIN {
        1
    } else {
        candle_core::utils::get_num_threads().max(1)
    }
}

/// `0..count` in at most `parts` contiguous, non-empty runs of near-equal length.
fn runs(count: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, count.max(1));
    let (base, extra) = (count / parts, count % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = base + usize::from(i < extra);
            start += len;
            start - len..start
        })
        .filter(|r| !r.is_empty())
        .collect()
}

/// `work(item)` for every item, the first on the calling thread and each other on its own thread;
/// results in item order.
fn on_threads<I: Send, R: Send>(items: Vec<I>, work: impl Fn(I) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 {
        return items.into_iter().map(work).collect();
    }
    std::thread::scope(|scope| {
        let work = &work;
        let mut items = items.into_iter();
        let first = items.next();
        let spawned: Vec<_> = items.map(|item| scope.spawn(move || work(item))).collect();
        let mut results: Vec<R> = first.into_iter().map(work).collect();
        results.extend(spawned.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))));
        results
    })
}

/// Hands every value of `out`, seen as units of `unit` values, to exactly one call
/// `work(first_unit, chunk)`: contiguous chunks of whole units split over threads, the last chunk
/// also taking any values past the last whole unit.
fn fill_units<T: Send>(out: &mut [T], unit: usize, work: impl Fn(usize, &mut [T]) + Sync) {
    let unit = unit.max(1);
    let parts = runs(out.len() / unit, threads_for(out.len()));
    let last = parts.len().saturating_sub(1);
    let mut chunks = Vec::with_capacity(parts.len().max(1));
    let mut rest = out;
    for (i, run) in parts.into_iter().enumerate() {
        let size = if i == last { rest.len() } else { run.len() * unit };
        let (mine, tail) = rest.split_at_mut(size);
        chunks.push((run.start, mine));
        rest = tail;
    }
    if chunks.is_empty() {
        chunks.push((0, rest));
    }
    on_threads(chunks, |(first, chunk)| work(first, chunk));
}

/// A new vector of `len` values written by `work(first_unit, piece)` on pieces of whole units
/// (chunks split over threads as in [`fill_units`]). Each piece is zeroed just before `work` sees
/// it, while it sits in cache: cheaper than zeroing the whole vector first on one thread.
fn build<T: WithDType>(len: usize, unit: usize, work: impl Fn(usize, &mut [T]) + Sync) -> Vec<T> {
    /// Values zeroed and handed to `work` at a time (4 KiB of f32: in L1), at least one unit.
    const PIECE: usize = 1 << 10;
    let unit = unit.max(1);
    let piece_units = (PIECE / unit).max(1);
    let mut out = Vec::with_capacity(len);
    fill_units(&mut out.spare_capacity_mut()[..len], unit, |first, chunk| {
        for (i, piece) in chunk.chunks_mut(piece_units * unit).enumerate() {
            piece.iter_mut().for_each(|slot| {
                slot.write(T::from_f64(0.0));
            });
            // SAFETY: every slot of `piece` was written just above, and `MaybeUninit<T>` has
            // the size, alignment and layout of `T`.
            let piece = unsafe { &mut *(piece as *mut [std::mem::MaybeUninit<T>] as *mut [T]) };
            work(first + i * piece_units, piece);
        }
    });
    // SAFETY: `fill_units` hands each of the first `len` slots to exactly one chunk, and every
    // slot of every chunk was written above; `len` is within the capacity.
    unsafe { out.set_len(len) };
    out
}

/// `f(x)` of every value, on threads. `f` is copied into each piece's loop so that what it holds
/// stays in registers and the loop vectorises.
fn map_values<T: WithDType>(x: &[T], f: impl Fn(T) -> T + Sync + Copy) -> Vec<T> {
    build(x.len(), 1, |first, out| {
        let local = f;
        out.iter_mut().zip(&x[first..]).for_each(|(o, &v)| *o = local(v));
    })
}

/// `f(a, b)` of every pair of values, on threads; see [`map_values`].
fn map_pairs<T: WithDType>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync + Copy) -> Vec<T> {
    build(a.len(), 1, |first, out| {
        let local = f;
        out.iter_mut().zip(a[first..].iter().zip(&b[first..])).for_each(|(o, (&a, &b))| *o = local(a, b));
    })
}

/// The LeakyReLU op: `x if x > 0 else slope * x`.
#[derive(Debug, Clone, Copy)]
struct LeakyRelu {
    slope: f64,
}

impl LeakyRelu {
    /// `x * (1 or slope)`: a select between two constants, without branches (equal to `x` itself
    /// where `x > 0`).
    fn forward<T: WithDType>(&self, x: &[T]) -> Vec<T> {
        let (zero, one, slope) = (T::from_f64(0.0), T::from_f64(1.0), T::from_f64(self.slope));
        map_values(x, move |v| v * if v > zero { one } else { slope })
    }

    fn backward<T: WithDType>(&self, x: &[T], grad: &[T]) -> Vec<T> {
        let (zero, one, slope) = (T::from_f64(0.0), T::from_f64(1.0), T::from_f64(self.slope));
        map_pairs(x, grad, move |v, g| g * if v > zero { one } else { slope })
    }
}

impl CustomOp1 for LeakyRelu {
    fn name(&self) -> &'static str {
        "leaky-relu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match storage {
            CpuStorage::F32(x) => CpuStorage::F32(self.forward(contiguous(x, layout, "x")?)),
            CpuStorage::F64(x) => CpuStorage::F64(self.forward(contiguous(x, layout, "x")?)),
            _ => candle_core::bail!("leaky relu: x must be f32 or f64, got {:?}", storage.dtype()),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (x, grad) = (x.contiguous()?, grad.contiguous()?);
        let (xs, xl) = x.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let dx = match (&*xs, &*gs) {
            (Storage::Cpu(CpuStorage::F32(xv)), Storage::Cpu(CpuStorage::F32(gv))) => {
                let dx = self.backward(contiguous(xv, xl, "x")?, contiguous(gv, gl, "grad")?);
                Tensor::from_vec(dx, x.shape(), x.device())?
            }
            (Storage::Cpu(CpuStorage::F64(xv)), Storage::Cpu(CpuStorage::F64(gv))) => {
                let dx = self.backward(contiguous(xv, xl, "x")?, contiguous(gv, gl, "grad")?);
                Tensor::from_vec(dx, x.shape(), x.device())?
            }
            _ => candle_core::bail!("leaky relu: backward needs CPU x and gradient of one float type"),
        };
        Ok(Some(dx))
    }
}

/// LeakyReLU: `x if x > 0 else slope * x`. CPU f32/f64 run a custom op with its own backward; other
/// devices and dtypes run candle ops.
pub fn leaky_relu(x: &Tensor, slope: f64) -> candle_core::Result<Tensor> {
    if fast_path(x) {
        return x.contiguous()?.apply_op1(LeakyRelu { slope });
    }
    leaky_relu_with_candle_ops(x, slope)
}

/// The same function from candle ops; `where_cond` sends the gradient at 0 to the `slope` side.
fn leaky_relu_with_candle_ops(x: &Tensor, slope: f64) -> candle_core::Result<Tensor> {
    x.gt(0.0)?.where_cond(x, &x.affine(slope, 0.0)?)
}

/// A batch-norm input seen as `batch` samples of `channels` blocks of `spatial` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dims {
    batch: usize,
    channels: usize,
    spatial: usize,
}

impl Dims {
    fn of(dims: &[usize]) -> candle_core::Result<Dims> {
        match dims {
            [batch, channels, rest @ ..] => {
                Ok(Dims { batch: *batch, channels: *channels, spatial: rest.iter().product() })
            }
            _ => candle_core::bail!("batch norm: x must be (batch, channels, ...), got {dims:?}"),
        }
    }

    /// Values a channel: what its mean is taken over.
    fn per_channel(&self) -> usize {
        self.batch * self.spatial
    }

    fn per_sample(&self) -> usize {
        self.channels * self.spatial
    }

    /// Where the values of `channels` in sample `sample` lie (one contiguous run).
    fn span(&self, sample: usize, channels: &Range<usize>) -> Range<usize> {
        let start = (sample * self.channels + channels.start) * self.spatial;
        start..start + channels.len() * self.spatial
    }

    /// Per channel, two sums that `add(sample, channels, firsts, seconds)` accumulates sample by
    /// sample into one value a channel of `channels` in each slice (two slices rather than pairs, so
    /// that the one-value-a-channel loops vectorise); channels split over threads, samples in order.
    fn channel_sums(&self, add: impl Fn(usize, Range<usize>, &mut [f64], &mut [f64]) + Sync) -> Vec<(f64, f64)> {
        let parts = runs(self.channels, threads_for(self.batch * self.per_sample()));
        let per_run = on_threads(parts, |channels| {
            let (mut firsts, mut seconds) = (vec![0.0; channels.len()], vec![0.0; channels.len()]);
            for sample in 0..self.batch {
                add(sample, channels.clone(), &mut firsts, &mut seconds);
            }
            firsts.into_iter().zip(seconds).collect::<Vec<_>>()
        });
        per_run.concat()
    }

    /// A new vector shaped like the input, filled sample by sample with `fill(values, out_sample)`,
    /// `values` the sample's span of the input; samples split over threads.
    fn map_samples<T: WithDType>(&self, fill: impl Fn(Range<usize>, &mut [T]) + Sync) -> Vec<T> {
        let per_sample = self.per_sample();
        build(self.batch * per_sample, per_sample, |first, out| {
            for (i, out) in out.chunks_exact_mut(per_sample).enumerate() {
                let start = (first + i) * per_sample;
                fill(start..start + per_sample, out);
            }
        })
    }
}

/// Independent partial sums a reduction keeps, so that its adds can run side by side (and the
/// order, hence the result, is fixed).
const LANES: usize = 8;

/// The lanes' total, in a fixed order.
fn total(lanes: [f64; LANES]) -> f64 {
    let half = [lanes[0] + lanes[4], lanes[1] + lanes[5], lanes[2] + lanes[6], lanes[3] + lanes[7]];
    (half[0] + half[2]) + (half[1] + half[3])
}

/// `(sum(x - shift), sum((x - shift)^2))` in f64 lanes.
fn shifted_sums<T: WithDType>(x: &[T], shift: f64) -> (f64, f64) {
    let (mut sum, mut square) = ([0.0; LANES], [0.0; LANES]);
    let mut groups = x.chunks_exact(LANES);
    for group in &mut groups {
        for lane in 0..LANES {
            let v = group[lane].to_f64() - shift;
            sum[lane] += v;
            square[lane] += v * v;
        }
    }
    for (lane, &v) in groups.remainder().iter().enumerate() {
        let v = v.to_f64() - shift;
        sum[lane] += v;
        square[lane] += v * v;
    }
    (total(sum), total(square))
}

/// `(sum(dy), sum(dy * (x - mean)))` in f64 lanes.
fn gradient_sums<T: WithDType>(x: &[T], dy: &[T], mean: f64) -> (f64, f64) {
    let (mut sum, mut product) = ([0.0; LANES], [0.0; LANES]);
    let (mut xs, mut gs) = (x.chunks_exact(LANES), dy.chunks_exact(LANES));
    for (x, g) in (&mut xs).zip(&mut gs) {
        for lane in 0..LANES {
            let g = g[lane].to_f64();
            sum[lane] += g;
            product[lane] += g * (x[lane].to_f64() - mean);
        }
    }
    for (lane, (&x, &g)) in xs.remainder().iter().zip(gs.remainder()).enumerate() {
        let g = g.to_f64();
        sum[lane] += g;
        product[lane] += g * (x.to_f64() - mean);
    }
    (total(sum), total(product))
}

/// One train step's per-channel batch mean and biased variance.
#[derive(Debug)]
struct BatchStats {
    mean: Vec<f64>,
    var: Vec<f64>,
}

/// Steps 1 and 2 of the module header: the output and the batch statistics. With one value a
/// channel and sample (BatchNorm1d) the loops run along the channels instead of within blocks.
fn train_forward<T: WithDType>(x: &[T], gamma: &[T], beta: &[T], d: Dims, eps: f64) -> (Vec<T>, BatchStats) {
    let n = d.per_channel() as f64;
    let spatial = d.spatial;
    let shift: Vec<f64> = (0..d.channels).map(|c| x[c * spatial].to_f64()).collect();
    let sums = d.channel_sums(|sample, channels, sums, squares| {
        let xs = &x[d.span(sample, &channels)];
        let shift = &shift[channels];
        let totals = sums.iter_mut().zip(squares.iter_mut());
        if spatial == 1 {
            for (((sum, square), &v), &k) in totals.zip(xs).zip(shift) {
                let v = v.to_f64() - k;
                *sum += v;
                *square += v * v;
            }
        } else {
            for (((sum, square), block), &k) in totals.zip(xs.chunks_exact(spatial)).zip(shift) {
                let (a, b) = shifted_sums(block, k);
                *sum += a;
                *square += b;
            }
        }
    });
    let mean: Vec<f64> = sums.iter().zip(&shift).map(|((sum, _), k)| k + sum / n).collect();
    let var: Vec<f64> = sums.iter().map(|(sum, square)| ((square - sum * sum / n) / n).max(0.0)).collect();

    // out = (x - mean) * scale + beta, scale = gamma / sigma
    // (one slice per coefficient, so that the one-value-a-channel loop vectorises)
    let means: Vec<T> = mean.iter().map(|&m| T::from_f64(m)).collect();
    let scales: Vec<T> = (0..d.channels).map(|c| T::from_f64(gamma[c].to_f64() / (var[c] + eps).sqrt())).collect();
    let coefficients = || means.iter().zip(&scales).zip(beta);
    let out = d.map_samples(|values, out: &mut [T]| {
        let xs = &x[values];
        if spatial == 1 {
            for ((o, &v), ((&m, &k), &b)) in out.iter_mut().zip(xs).zip(coefficients()) {
                *o = (v - m) * k + b;
            }
        } else {
            for ((out, xs), ((&m, &k), &b)) in
                out.chunks_exact_mut(spatial).zip(xs.chunks_exact(spatial)).zip(coefficients())
            {
                out.iter_mut().zip(xs).for_each(|(o, &v)| *o = (v - m) * k + b);
            }
        }
    });
    (out, BatchStats { mean, var })
}

/// Step 3 of the module header: `(dx, dgamma, dbeta)`.
fn train_backward<T: WithDType>(
    x: &[T],
    gamma: &[T],
    dy: &[T],
    d: Dims,
    stats: &BatchStats,
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let n = d.per_channel() as f64;
    let spatial = d.spatial;
    let sums = d.channel_sums(|sample, channels, sums, products| {
        let span = d.span(sample, &channels);
        let (xs, gs, means) = (&x[span.clone()], &dy[span], &stats.mean[channels]);
        let totals = sums.iter_mut().zip(products.iter_mut());
        if spatial == 1 {
            for (((sum, product), (&x, &g)), &m) in totals.zip(xs.iter().zip(gs)).zip(means) {
                let g = g.to_f64();
                *sum += g;
                *product += g * (x.to_f64() - m);
            }
        } else {
            let blocks = xs.chunks_exact(spatial).zip(gs.chunks_exact(spatial));
            for (((sum, product), (xs, gs)), &m) in totals.zip(blocks).zip(means) {
                let (a, b) = gradient_sums(xs, gs, m);
                *sum += a;
                *product += b;
            }
        }
    });
    let inv_sigma: Vec<f64> = stats.var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let d_beta: Vec<T> = sums.iter().map(|&(sum, _)| T::from_f64(sum)).collect();
    let d_gamma: Vec<T> = sums.iter().zip(&inv_sigma).map(|(&(_, product), s)| T::from_f64(product * s)).collect();

    // dx = k * (dy - mean(dy) - (x - mean) * q), k = gamma / sigma, q = mean(dy * (x - mean)) / sigma^2
    // (one slice per coefficient, so that the one-value-a-channel loop vectorises)
    let per_channel = |f: &dyn Fn(usize) -> f64| (0..d.channels).map(|c| T::from_f64(f(c))).collect::<Vec<T>>();
    let means = per_channel(&|c| stats.mean[c]);
    let ks = per_channel(&|c| gamma[c].to_f64() * inv_sigma[c]);
    let mean_dys = per_channel(&|c| sums[c].0 / n);
    let qs = per_channel(&|c| sums[c].1 / n * inv_sigma[c] * inv_sigma[c]);
    let coefficients = || means.iter().zip(&ks).zip(mean_dys.iter().zip(&qs));
    let dx = d.map_samples(|values, out: &mut [T]| {
        let (xs, gs) = (&x[values.clone()], &dy[values]);
        if spatial == 1 {
            for ((o, (&x, &g)), ((&m, &k), (&mean_dy, &q))) in out.iter_mut().zip(xs.iter().zip(gs)).zip(coefficients())
            {
                *o = k * (g - mean_dy - (x - m) * q);
            }
        } else {
            let blocks = out.chunks_exact_mut(spatial).zip(xs.chunks_exact(spatial).zip(gs.chunks_exact(spatial)));
            for ((out, (xs, gs)), ((&m, &k), (&mean_dy, &q))) in blocks.zip(coefficients()) {
                for (o, (&x, &g)) in out.iter_mut().zip(xs.iter().zip(gs)) {
                    *o = k * (g - mean_dy - (x - m) * q);
                }
            }
        }
    });
    (dx, d_gamma, d_beta)
}

/// The train-mode op on `(x, gamma, beta)`; see the module header.
#[derive(Debug)]
struct BatchNormTrain {
    eps: f64,
    /// LeakyReLU applied to the normalised output in the same op (its slope), see
    /// [`BatchNorm::forward_leaky_t`].
    leaky: Option<f64>,
    /// Set by the forward, read by the backward and by [`BatchNorm::forward_t`] (which keeps a clone
    /// of the Arc: candle takes the op itself). Set once: an op instance runs one forward.
    stats: Arc<OnceLock<BatchStats>>,
}

impl BatchNormTrain {
    fn dims(x: &[usize], gamma: &[usize], beta: &[usize]) -> candle_core::Result<Dims> {
        let d = Dims::of(x)?;
        if gamma != [d.channels] || beta != [d.channels] {
            candle_core::bail!("batch norm: weight and bias must be ({},), got {gamma:?} and {beta:?}", d.channels);
        }
        if d.per_channel() == 0 {
            candle_core::bail!("batch norm: x {x:?} has no values to normalise");
        }
        Ok(d)
    }
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = Self::dims(l1.dims(), l2.dims(), l3.dims())?;
        let (out, stats) = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(g), CpuStorage::F32(b)) => {
                let (x, g, b) = (contiguous(x, l1, "x")?, contiguous(g, l2, "weight")?, contiguous(b, l3, "bias")?);
                let (mut out, stats) = train_forward(x, g, b, d, self.eps);
                if let Some(slope) = self.leaky {
                    leaky_in_place(&mut out, slope);
                }
                (CpuStorage::F32(out), stats)
            }
            (CpuStorage::F64(x), CpuStorage::F64(g), CpuStorage::F64(b)) => {
                let (x, g, b) = (contiguous(x, l1, "x")?, contiguous(g, l2, "weight")?, contiguous(b, l3, "bias")?);
                let (mut out, stats) = train_forward(x, g, b, d, self.eps);
                if let Some(slope) = self.leaky {
                    leaky_in_place(&mut out, slope);
                }
                (CpuStorage::F64(out), stats)
            }
            _ => candle_core::bail!("batch norm: x, weight and bias must all be f32 or all f64"),
        };
        if self.stats.set(stats).is_err() {
            candle_core::bail!("batch norm: one train op ran its forward twice");
        }
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = Self::dims(x.dims(), gamma.dims(), beta.dims())?;
        let Some(stats) = self.stats.get() else {
            candle_core::bail!("batch norm: backward before forward");
        };
        // With the LeakyReLU fused in, the gradient at the normalised values first goes through
        // its derivative: 1 or `slope` by the sign of the output, which is that of its input.
        let grad = match self.leaky {
            Some(slope) => leaky_grad(res, grad, slope)?,
            None => grad.clone(),
        };
        let (x, gamma, grad) = (x.contiguous()?, gamma.contiguous()?, grad.contiguous()?);
        let (xs, xl) = x.storage_and_layout();
        let (gs, gl) = gamma.storage_and_layout();
        let (ds, dl) = grad.storage_and_layout();
        let device = x.device();
        let (dx, d_gamma, d_beta) = match (&*xs, &*gs, &*ds) {
            (
                Storage::Cpu(CpuStorage::F32(xv)),
                Storage::Cpu(CpuStorage::F32(gv)),
                Storage::Cpu(CpuStorage::F32(dv)),
            ) => {
                let (xv, gv, dv) =
                    (contiguous(xv, xl, "x")?, contiguous(gv, gl, "weight")?, contiguous(dv, dl, "grad")?);
                let (dx, dg, db) = train_backward(xv, gv, dv, d, stats, self.eps);
                (Tensor::from_vec(dx, x.shape(), device)?, Tensor::new(dg, device)?, Tensor::new(db, device)?)
            }
            (
                Storage::Cpu(CpuStorage::F64(xv)),
                Storage::Cpu(CpuStorage::F64(gv)),
                Storage::Cpu(CpuStorage::F64(dv)),
            ) => {
                let (xv, gv, dv) =
                    (contiguous(xv, xl, "x")?, contiguous(gv, gl, "weight")?, contiguous(dv, dl, "grad")?);
                let (dx, dg, db) = train_backward(xv, gv, dv, d, stats, self.eps);
                (Tensor::from_vec(dx, x.shape(), device)?, Tensor::new(dg, device)?, Tensor::new(db, device)?)
            }
            _ => candle_core::bail!("batch norm: backward needs CPU tensors of one float type"),
        };
        Ok((Some(dx), Some(d_gamma), Some(d_beta)))
    }
}

/// LeakyReLU of every value, in place.
fn leaky_in_place<T: WithDType>(values: &mut [T], slope: f64) {
    let (zero, slope) = (T::from_f64(0.0), T::from_f64(slope));
    values.iter_mut().for_each(|v| {
        if *v <= zero {
            *v *= slope;
        }
    });
}

/// `grad * (1 if out > 0 else slope)` on CPU f32/f64 tensors (a plain function of two tensors:
/// no graph node).
fn leaky_grad(out: &Tensor, grad: &Tensor, slope: f64) -> candle_core::Result<Tensor> {
    let (out, grad) = (out.contiguous()?, grad.contiguous()?);
    let (os, ol) = out.storage_and_layout();
    let (gs, gl) = grad.storage_and_layout();
    match (&*os, &*gs) {
        (Storage::Cpu(CpuStorage::F32(o)), Storage::Cpu(CpuStorage::F32(g))) => {
            let dx = LeakyRelu { slope }.backward(contiguous(o, ol, "out")?, contiguous(g, gl, "grad")?);
            Tensor::from_vec(dx, out.shape(), out.device())
        }
        (Storage::Cpu(CpuStorage::F64(o)), Storage::Cpu(CpuStorage::F64(g))) => {
            let dx = LeakyRelu { slope }.backward(contiguous(o, ol, "out")?, contiguous(g, gl, "grad")?);
            Tensor::from_vec(dx, out.shape(), out.device())
        }
        _ => candle_core::bail!("batch norm: the fused LeakyReLU's backward needs CPU f32 or f64 tensors"),
    }
}

/// `(1, C, 1, ...)`: a per-channel vector broadcast against a rank-`rank` input.
fn channel_shape(rank: usize, channels: usize) -> Vec<usize> {
    let mut shape = vec![1; rank];
    shape[1] = channels;
    shape
}

/// Train-mode batch norm from candle ops (other devices and dtypes; the tests' reference):
/// `(out, batch mean, biased batch variance)`, the statistics `(C,)` and detached.
fn train_with_candle_ops(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let (rank, channels) = (x.rank(), x.dim(1)?);
    let reduced: Vec<usize> = (0..rank).filter(|&d| d != 1).collect();
    let shape = channel_shape(rank, channels);
    let mean = x.mean_keepdim(reduced.clone())?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(reduced)?;
    let xhat = centered.broadcast_div(&var.affine(1.0, eps)?.sqrt()?)?;
    let out = xhat.broadcast_mul(&gamma.reshape(shape.as_slice())?)?.broadcast_add(&beta.reshape(shape.as_slice())?)?;
    Ok((out, mean.detach().flatten_all()?, var.detach().flatten_all()?))
}

/// BatchNorm over dim 1 of `(B, C)` or `(B, C, H, W)` (any `(B, C, ...)`), PyTorch's
/// `BatchNorm1d`/`BatchNorm2d`: `out = gamma * xhat + beta`, `xhat` normalised with the batch's mean
/// and biased variance in training and with the running statistics in evaluation.
///
/// A train step:
/// 1. normalises with the batch statistics (the train op, see the module header);
/// 2. updates the running statistics PyTorch's way, without gradient:
///    `running = (1 - momentum) * running + momentum * batch_stat`, with the UNBIASED batch variance
///    (`n / (n - 1)` times the biased one) for the running variance.
#[derive(Debug)]
pub struct BatchNorm {
    /// gamma `(C,)`, "weight" in the VarBuilder (init 1): a Var of the caller's VarMap, trained.
    weight: Tensor,
    /// beta `(C,)`, "bias" in the VarBuilder (init 0): likewise.
    bias: Tensor,
    /// Running (mean, variance), `(C,)` each, in the weight's dtype and device; start at 0 and 1.
    /// Plain tensors, not Vars of the VarMap: no optimizer may ever update them (candle-nn's
    /// BatchNorm hands its running stats to the optimizer). A std mutex because `forward_t` takes
    /// `&self` (candle's `ModuleT`) and the layer moves to the job's thread; it is held only to read
    /// or swap the two tensors.
    running: Mutex<(Tensor, Tensor)>,
    channels: usize,
    eps: f64,
    /// PyTorch's convention: Keras momentum 0.99 is 0.01 here.
    momentum: f64,
}

impl BatchNorm {
    pub fn new(channels: usize, eps: f64, momentum: f64, vb: candle_nn::VarBuilder) -> candle_core::Result<Self> {
        if channels == 0 {
            candle_core::bail!("batch norm: needs at least one channel");
        }
        if !(eps >= 0.0 && eps.is_finite()) {
            candle_core::bail!("batch norm: eps must be finite and >= 0, got {eps}");
        }
        if !(0.0..=1.0).contains(&momentum) {
            candle_core::bail!("batch norm: momentum must be in [0, 1], got {momentum}");
        }
        let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.0))?;
        let running_mean = Tensor::zeros(channels, vb.dtype(), vb.device())?;
        let running_var = Tensor::ones(channels, vb.dtype(), vb.device())?;
        Ok(Self { weight, bias, running: Mutex::new((running_mean, running_var)), channels, eps, momentum })
    }

    /// `train`: normalise with the batch's statistics, then update the running ones (see the type);
    /// otherwise normalise with the running statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.forward_with(x, train, None)
    }

    /// `leaky_relu(self.forward_t(x, train), slope)`; in training on CPU one op, which saves
    /// candle's autograd a gradient buffer and a pass over these large tensors.
    pub fn forward_leaky_t(&self, x: &Tensor, train: bool, slope: f64) -> candle_core::Result<Tensor> {
        self.forward_with(x, train, Some(slope))
    }

    fn forward_with(&self, x: &Tensor, train: bool, leaky: Option<f64>) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        if dims.len() < 2 || dims[1] != self.channels {
            candle_core::bail!("batch norm: x must be (batch, {}, ...), got {dims:?}", self.channels);
        }
        if !train {
            let out = self.eval(x)?;
            return match leaky {
                Some(slope) => leaky_relu(&out, slope),
                None => Ok(out),
            };
        }
        let n = Dims::of(dims)?.per_channel();
        if n < 2 {
            candle_core::bail!("batch norm: training needs more than one value a channel, got x {dims:?}");
        }
        let (out, mean, var) = if fast_path(x) {
            let stats = Arc::new(OnceLock::new());
            let op = BatchNormTrain { eps: self.eps, leaky, stats: Arc::clone(&stats) };
            let out = x.contiguous()?.apply_op3(&self.weight, &self.bias, op)?;
            let Some(stats) = stats.get() else {
                candle_core::bail!("batch norm: the train op left no statistics");
            };
            (out, Tensor::new(stats.mean.as_slice(), x.device())?, Tensor::new(stats.var.as_slice(), x.device())?)
        } else {
            let (out, mean, var) = train_with_candle_ops(x, &self.weight, &self.bias, self.eps)?;
            let out = match leaky {
                Some(slope) => leaky_relu(&out, slope)?,
                None => out,
            };
            (out, mean, var)
        };
        let unbiased = var.affine(n as f64 / (n - 1) as f64, 0.0)?;
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let blend = |running: &Tensor, batch: &Tensor| -> candle_core::Result<Tensor> {
            let batch = batch.to_dtype(running.dtype())?.affine(self.momentum, 0.0)?;
            running.affine(1.0 - self.momentum, 0.0)?.add(&batch)
        };
        *running = (blend(&running.0, &mean)?, blend(&running.1, &unbiased)?);
        Ok(out)
    }

    /// `(x - running_mean) * gamma / sqrt(running_var + eps) + beta`, from candle ops.
    fn eval(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (mean, var) = self.running();
        let shape = channel_shape(x.rank(), self.channels);
        let scale = self.weight.div(&var.affine(1.0, self.eps)?.sqrt()?)?;
        x.broadcast_sub(&mean.reshape(shape.as_slice())?)?
            .broadcast_mul(&scale.reshape(shape.as_slice())?)?
            .broadcast_add(&self.bias.reshape(shape.as_slice())?)
    }

    /// `(running_mean, running_var)` as `(C,)` tensors, for checkpoints.
    pub fn running(&self) -> (Tensor, Tensor) {
        self.running.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces the running statistics (checkpoint restore) with copies in the layer's dtype and
    /// device; each must be `(C,)`.
    pub fn set_running(&self, mean: &Tensor, var: &Tensor) -> candle_core::Result<()> {
        for (what, t) in [("mean", mean), ("variance", var)] {
            if t.dims() != [self.channels] {
                candle_core::bail!("batch norm: running {what} must be ({},), got {:?}", self.channels, t.dims());
            }
        }
        let (dtype, device) = (self.weight.dtype(), self.weight.device());
        let own = |t: &Tensor| t.detach().to_device(device)?.to_dtype(dtype)?.copy();
        let fresh = (own(mean)?, own(var)?);
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }
}

impl candle_nn::ModuleT for BatchNorm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        BatchNorm::forward_t(self, xs, train)
    }
}

/// The bias-add op: `x + bias[c]` over dim 1 of `(B, C, ...)`.
#[derive(Debug, Clone, Copy)]
struct BiasAdd;

impl BiasAdd {
    fn forward<T: WithDType>(x: &[T], bias: &[T], d: &Dims) -> Vec<T> {
        d.map_samples(|values, out| {
            for (c, (o, v)) in out.chunks_exact_mut(d.spatial).zip(x[values].chunks_exact(d.spatial)).enumerate() {
                let b = bias[c];
                o.iter_mut().zip(v).for_each(|(o, &v)| *o = v + b);
            }
        })
    }

    /// The bias gradient: per channel, the sum of the output gradient.
    fn bias_grad<T: WithDType>(grad: &[T], d: &Dims) -> Vec<T> {
        let sums = d.channel_sums(|sample, channels, firsts, _| {
            let values = &grad[d.span(sample, &channels)];
            for (sum, g) in firsts.iter_mut().zip(values.chunks_exact(d.spatial.max(1))) {
                *sum += shifted_sums(g, 0.0).0;
            }
        });
        sums.into_iter().map(|(sum, _)| T::from_f64(sum)).collect()
    }
}

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = Dims::of(l1.dims())?;
        if l2.shape().elem_count() != d.channels {
            candle_core::bail!("bias add: {} bias values for {} channels", l2.shape().elem_count(), d.channels);
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(b)) => {
                CpuStorage::F32(Self::forward(contiguous(x, l1, "x")?, contiguous(b, l2, "bias")?, &d))
            }
            (CpuStorage::F64(x), CpuStorage::F64(b)) => {
                CpuStorage::F64(Self::forward(contiguous(x, l1, "x")?, contiguous(b, l2, "bias")?, &d))
            }
            _ => candle_core::bail!("bias add: x and bias must both be f32 or both f64"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = Dims::of(x.dims())?;
        let grad = grad.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let db = match &*gs {
            Storage::Cpu(CpuStorage::F32(g)) => {
                Tensor::from_vec(Self::bias_grad(contiguous(g, gl, "grad")?, &d), bias.shape(), bias.device())?
            }
            Storage::Cpu(CpuStorage::F64(g)) => {
                Tensor::from_vec(Self::bias_grad(contiguous(g, gl, "grad")?, &d), bias.shape(), bias.device())?
            }
            _ => candle_core::bail!("bias add: backward needs a CPU f32 or f64 gradient"),
        };
        drop(gs);
        Ok((Some(grad), Some(db)))
    }
}

/// `x + bias` with one bias value per channel (dim 1 of `(B, C, ...)`; `bias` holds `C` values in
/// any shape). On CPU f32/f64 one op whose bias gradient is a per-channel sum in a fixed order;
/// elsewhere candle's `broadcast_add`.
pub fn bias_add(x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    if fast_path(x) && x.dtype() == bias.dtype() {
        return x.contiguous()?.apply_op2(&bias.contiguous()?, BiasAdd);
    }
    let mut shape = vec![1; x.rank()];
    if x.rank() > 1 {
        shape[1] = bias.elem_count();
    }
    x.broadcast_add(&bias.reshape(shape)?)
}

/// The discriminator's activation block as one op: `leaky_relu(x + bias[c]) * mask`, the mask
/// holding 0 or `1 / (1 - rate)` (inverted dropout). One op instead of three keeps candle's
/// autograd from allocating and summing a gradient buffer per step on these large tensors.
#[derive(Debug, Clone, Copy)]
struct BiasLeakyDropout {
    slope: f64,
}

impl BiasLeakyDropout {
    fn forward<T: WithDType>(&self, x: &[T], bias: &[T], mask: &[T], d: &Dims) -> Vec<T> {
        let (zero, one, slope) = (T::from_f64(0.0), T::from_f64(1.0), T::from_f64(self.slope));
        d.map_samples(|values, out| {
            let (x, mask) = (&x[values.clone()], &mask[values]);
            for (c, ((o, v), m)) in out
                .chunks_exact_mut(d.spatial)
                .zip(x.chunks_exact(d.spatial))
                .zip(mask.chunks_exact(d.spatial))
                .enumerate()
            {
                let b = bias[c];
                o.iter_mut().zip(v.iter().zip(m)).for_each(|(o, (&v, &m))| {
                    let z = v + b;
                    *o = z * if z > zero { one } else { slope } * m;
                });
            }
        })
    }

    /// `dz = grad * mask * leaky'(z)`; the sign of `z` is the output's wherever the mask keeps the
    /// value, and where it does not `dz` is 0 either way. Returns `(dz, per-channel sums of dz)`.
    fn backward<T: WithDType>(&self, out: &[T], mask: &[T], grad: &[T], d: &Dims) -> (Vec<T>, Vec<T>) {
        let (zero, one, slope) = (T::from_f64(0.0), T::from_f64(1.0), T::from_f64(self.slope));
        let dz = build(out.len(), 1, |first, dst| {
            let n = dst.len();
            let (y, m, g) = (&out[first..first + n], &mask[first..first + n], &grad[first..first + n]);
            for (o, ((&y, &m), &g)) in dst.iter_mut().zip(y.iter().zip(m).zip(g)) {
                *o = g * m * if y > zero { one } else { slope };
            }
        });
        let db = BiasAdd::bias_grad(&dz, d);
        (dz, db)
    }
}

impl CustomOp3 for BiasLeakyDropout {
    fn name(&self) -> &'static str {
        "bias-leaky-dropout"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = Dims::of(l1.dims())?;
        if l2.shape().elem_count() != d.channels {
            candle_core::bail!(
                "bias leaky dropout: {} bias values for {} channels",
                l2.shape().elem_count(),
                d.channels
            );
        }
        if l3.dims() != l1.dims() {
            candle_core::bail!("bias leaky dropout: mask {:?} for x {:?}", l3.dims(), l1.dims());
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(b), CpuStorage::F32(m)) => CpuStorage::F32(self.forward(
                contiguous(x, l1, "x")?,
                contiguous(b, l2, "bias")?,
                contiguous(m, l3, "mask")?,
                &d,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(b), CpuStorage::F64(m)) => CpuStorage::F64(self.forward(
                contiguous(x, l1, "x")?,
                contiguous(b, l2, "bias")?,
                contiguous(m, l3, "mask")?,
                &d,
            )),
            _ => candle_core::bail!("bias leaky dropout: x, bias and mask must share one float type"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        mask: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = Dims::of(x.dims())?;
        let (res, mask, grad) = (res.contiguous()?, mask.contiguous()?, grad.contiguous()?);
        let (rs, rl) = res.storage_and_layout();
        let (ms, ml) = mask.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (dx, db) = match (&*rs, &*ms, &*gs) {
            (Storage::Cpu(CpuStorage::F32(r)), Storage::Cpu(CpuStorage::F32(m)), Storage::Cpu(CpuStorage::F32(g))) => {
                let (dx, db) = self.backward(
                    contiguous(r, rl, "out")?,
                    contiguous(m, ml, "mask")?,
                    contiguous(g, gl, "grad")?,
                    &d,
                );
                (Tensor::from_vec(dx, x.shape(), x.device())?, Tensor::from_vec(db, bias.shape(), bias.device())?)
            }
            (Storage::Cpu(CpuStorage::F64(r)), Storage::Cpu(CpuStorage::F64(m)), Storage::Cpu(CpuStorage::F64(g))) => {
                let (dx, db) = self.backward(
                    contiguous(r, rl, "out")?,
                    contiguous(m, ml, "mask")?,
                    contiguous(g, gl, "grad")?,
                    &d,
                );
                (Tensor::from_vec(dx, x.shape(), x.device())?, Tensor::from_vec(db, bias.shape(), bias.device())?)
            }
            _ => candle_core::bail!("bias leaky dropout: backward needs CPU tensors of one float type"),
        };
        Ok((Some(dx), Some(db), None))
    }
}

/// `leaky_relu(x + bias[c], slope) * mask` over dim 1 of `(B, C, ...)`, `mask` shaped like `x`
/// (constant: no gradient reaches it). One op on CPU f32/f64; candle ops elsewhere.
pub fn bias_leaky_dropout(x: &Tensor, bias: &Tensor, slope: f64, mask: &Tensor) -> candle_core::Result<Tensor> {
    if fast_path(x) && x.dtype() == bias.dtype() && x.dtype() == mask.dtype() {
        return x.contiguous()?.apply_op3(
            &bias.contiguous()?,
            &mask.contiguous()?.detach(),
            BiasLeakyDropout { slope },
        );
    }
    leaky_relu(&bias_add(x, bias)?, slope)?.mul(&mask.detach())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use candle_nn::{VarBuilder, VarMap};

    #[test]
    fn fused_leaky_batch_norm_matches_its_parts() {
        let dev = Device::Cpu;
        for dims in [vec![16usize, 40], vec![8, 6, 5, 5]] {
            let build = || {
                let map = VarMap::new();
                let bn = BatchNorm::new(dims[1], 1e-3, 0.01, VarBuilder::from_varmap(&map, DType::F64, &dev)).unwrap();
                (map, bn)
            };
            let (map_a, fused) = build();
            let (map_b, plain) = build();
            let x = Var::from_tensor(&Tensor::randn(0.5f64, 1.0, dims.as_slice(), &dev).unwrap()).unwrap();
            let g = Tensor::randn(0f64, 1.0, dims.as_slice(), &dev).unwrap();
            let a = fused.forward_leaky_t(x.as_tensor(), true, 0.3).unwrap();
            let b = leaky_relu(&plain.forward_t(x.as_tensor(), true).unwrap(), 0.3).unwrap();
            let diff = |a: &Tensor, b: &Tensor| {
                a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
            };
            assert!(diff(&a, &b) < 1e-12, "{dims:?} forward");
            let ga = a.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = b.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(diff(ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap()) < 1e-10, "{dims:?} dx");
            for name in ["weight", "bias"] {
                let va = map_a.data().lock().unwrap()[name].clone();
                let vb = map_b.data().lock().unwrap()[name].clone();
                let d = diff(ga.get(va.as_tensor()).unwrap(), gb.get(vb.as_tensor()).unwrap());
                assert!(d < 1e-10, "{dims:?} d{name} differs by {d}");
            }
            assert!(diff(&fused.running().1, &plain.running().1) < 1e-15, "the running statistics move the same");
            let ea = fused.forward_leaky_t(x.as_tensor(), false, 0.3).unwrap();
            let eb = leaky_relu(&plain.forward_t(x.as_tensor(), false).unwrap(), 0.3).unwrap();
            assert!(diff(&ea, &eb) < 1e-12, "{dims:?} eval");
        }
    }

    #[test]
    fn bias_leaky_dropout_matches_its_parts() {
        let dev = Device::Cpu;
        for dims in [vec![4usize, 6, 3, 3], vec![64, 32, 14, 14]] {
            let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, dims.as_slice(), &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::randn(0f64, 1.0, dims[1], &dev).unwrap()).unwrap();
            let keep = Tensor::rand(0f64, 1.0, dims.as_slice(), &dev).unwrap().ge(0.3).unwrap();
            let mask = keep.to_dtype(DType::F64).unwrap().affine(1.0 / 0.7, 0.0).unwrap();
            let g = Tensor::randn(0f64, 1.0, dims.as_slice(), &dev).unwrap();
            let ours = bias_leaky_dropout(x.as_tensor(), b.as_tensor(), 0.3, &mask).unwrap();
            let parts = leaky_relu(&bias_add(x.as_tensor(), b.as_tensor()).unwrap(), 0.3).unwrap().mul(&mask).unwrap();
            let diff = |a: &Tensor, b: &Tensor| {
                a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
            };
            assert!(diff(&ours, &parts) < 1e-12, "{dims:?} forward");
            let ga = ours.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = parts.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &b] {
                let d = diff(ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap());
                assert!(d < 1e-10, "{dims:?} gradient differs by {d}");
            }
        }
    }

    #[test]
    fn bias_add_matches_broadcast_add() {
        let dev = Device::Cpu;
        for dims in [vec![3usize, 5], vec![4, 6, 3, 3], vec![64, 32, 14, 14]] {
            let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, dims.as_slice(), &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::randn(0f64, 1.0, dims[1], &dev).unwrap()).unwrap();
            let g = Tensor::randn(0f64, 1.0, dims.as_slice(), &dev).unwrap();
            let mut shape = vec![1; dims.len()];
            shape[1] = dims[1];
            let ours = bias_add(x.as_tensor(), b.as_tensor()).unwrap();
            let theirs = x.as_tensor().broadcast_add(&b.as_tensor().reshape(shape).unwrap()).unwrap();
            let diff = |a: &Tensor, b: &Tensor| {
                a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
            };
            assert_eq!(diff(&ours, &theirs), 0.0, "{dims:?} forward");
            let ga = ours.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = theirs.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &b] {
                let d = diff(ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap());
                assert!(d < 1e-10, "{dims:?} gradient differs by {d}");
            }
        }
        let err =
            bias_add(&Tensor::zeros((2, 3), DType::F32, &dev).unwrap(), &Tensor::zeros(4, DType::F32, &dev).unwrap());
        assert!(err.unwrap_err().to_string().contains("4 bias values for 3 channels"));
    }

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

    /// Largest absolute difference, in f64.
    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        let (a, b) = (a.to_dtype(DType::F64).unwrap(), b.to_dtype(DType::F64).unwrap());
        a.sub(&b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    fn values(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// A layer in a fresh VarMap, with gamma and beta set when given.
    fn layer(channels: usize, dtype: DType, gamma_beta: Option<(&Tensor, &Tensor)>) -> (VarMap, BatchNorm) {
        let mut varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
        let bn = BatchNorm::new(channels, 1e-3, 0.01, vb).unwrap();
        if let Some((gamma, beta)) = gamma_beta {
            varmap.set_one("weight", gamma.to_dtype(dtype).unwrap()).unwrap();
            varmap.set_one("bias", beta.to_dtype(dtype).unwrap()).unwrap();
        }
        (varmap, bn)
    }

    fn param(varmap: &VarMap, name: &str) -> Var {
        varmap.data().lock().unwrap()[name].clone()
    }

    /// One train step of the fixture's BatchNorm2d(4, eps=1e-3, momentum=0.01): output, gradients,
    /// running statistics, then the eval output with those statistics.
    #[test]
    fn train_step_matches_pytorch() {
        let all = fixture();
        let case = &all["batchnorm_train"];
        let (varmap, bn) = layer(4, DType::F64, Some((&tensor(case, "weight"), &tensor(case, "bias"))));
        let x = Var::from_tensor(&tensor(case, "x")).unwrap();
        // The fixture stores 13 significant digits: agreement to 1e-9 is exact up to that rounding.
        let out = bn.forward_t(x.as_tensor(), true).unwrap();
        assert!(max_diff(&out, &tensor(case, "output")) < 1e-9, "output");
        let grads = out.mul(&tensor(case, "G")).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(grads.get(x.as_tensor()).unwrap(), &tensor(case, "grad_x")) < 1e-9, "grad_x");
        let (gamma, beta) = (param(&varmap, "weight"), param(&varmap, "bias"));
        assert!(max_diff(grads.get(gamma.as_tensor()).unwrap(), &tensor(case, "grad_weight")) < 1e-9, "grad_w");
        assert!(max_diff(grads.get(beta.as_tensor()).unwrap(), &tensor(case, "grad_bias")) < 1e-9, "grad_b");
        let (mean, var) = bn.running();
        assert!(max_diff(&mean, &tensor(case, "running_mean")) < 1e-9, "running_mean");
        assert!(max_diff(&var, &tensor(case, "running_var")) < 1e-9, "running_var");
        let eval = bn.forward_t(x.as_tensor(), false).unwrap();
        assert!(max_diff(&eval, &tensor(case, "eval_output")) < 1e-9, "eval_output");
    }

    /// The candle-ops path (other devices; the reference below) against the same fixture.
    #[test]
    fn candle_ops_path_matches_pytorch() {
        let all = fixture();
        let case = &all["batchnorm_train"];
        let x = Var::from_tensor(&tensor(case, "x")).unwrap();
        let gamma = Var::from_tensor(&tensor(case, "weight")).unwrap();
        let beta = Var::from_tensor(&tensor(case, "bias")).unwrap();
        let (out, _, _) = train_with_candle_ops(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 1e-3).unwrap();
        assert!(max_diff(&out, &tensor(case, "output")) < 1e-9, "output");
        let grads = out.mul(&tensor(case, "G")).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(grads.get(x.as_tensor()).unwrap(), &tensor(case, "grad_x")) < 1e-9, "grad_x");
        assert!(max_diff(grads.get(gamma.as_tensor()).unwrap(), &tensor(case, "grad_weight")) < 1e-9, "grad_w");
        assert!(max_diff(grads.get(beta.as_tensor()).unwrap(), &tensor(case, "grad_bias")) < 1e-9, "grad_b");
    }

    /// Output, the three gradients and the running statistics of one train step, f64, random data
    /// with a mean far from 0: the op against the candle-ops formulas. BN1d shapes (one of them
    /// large enough to run on threads) and a threaded BN2d one.
    #[test]
    fn op_matches_candle_ops_in_f64() {
        let dev = Device::Cpu;
        for dims in [vec![3, 5], vec![64, 1024], vec![8, 16, 16, 16]] {
            let channels = dims[1];
            let x =
                Var::from_tensor(&(Tensor::randn(0f64, 2.0, dims.as_slice(), &dev).unwrap() + 5.0).unwrap()).unwrap();
            let g = Tensor::randn(0f64, 1.0, dims.as_slice(), &dev).unwrap();
            let gamma = Tensor::randn(1f64, 0.5, channels, &dev).unwrap();
            let beta = Tensor::randn(0f64, 0.5, channels, &dev).unwrap();
            let (varmap, bn) = layer(channels, DType::F64, Some((&gamma, &beta)));
            let out = bn.forward_t(x.as_tensor(), true).unwrap();
            let grads = out.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();

            let (x_ref, gamma_ref, beta_ref) = (
                Var::from_tensor(x.as_tensor()).unwrap(),
                Var::from_tensor(&gamma).unwrap(),
                Var::from_tensor(&beta).unwrap(),
            );
            let (reference, mean, var) =
                train_with_candle_ops(x_ref.as_tensor(), gamma_ref.as_tensor(), beta_ref.as_tensor(), 1e-3).unwrap();
            let ref_grads = reference.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();

            let at = format!("{dims:?}");
            assert!(max_diff(&out, &reference) < 1e-10, "{at} output");
            let (gamma_var, beta_var) = (param(&varmap, "weight"), param(&varmap, "bias"));
            let pairs = [
                (x.as_tensor(), x_ref.as_tensor(), "grad_x"),
                (gamma_var.as_tensor(), gamma_ref.as_tensor(), "grad_weight"),
                (beta_var.as_tensor(), beta_ref.as_tensor(), "grad_bias"),
            ];
            for (ours, theirs, what) in pairs {
                let (ours, theirs) = (grads.get(ours).unwrap(), ref_grads.get(theirs).unwrap());
                // The gradient sums run over up to 4096 values a channel.
                assert!(max_diff(ours, theirs) < 1e-9, "{at} {what}: {}", max_diff(ours, theirs));
            }
            let n = (dims.iter().product::<usize>() / channels) as f64;
            let (running_mean, running_var) = bn.running();
            let expected_mean = mean.affine(0.01, 0.0).unwrap();
            let expected_var = var.affine(0.01 * n / (n - 1.0), 0.99).unwrap();
            assert!(max_diff(&running_mean, &expected_mean) < 1e-12, "{at} running mean");
            assert!(max_diff(&running_var, &expected_var) < 1e-12, "{at} running var");
        }
    }

    /// The f32 op agrees with the f64 op on the same numbers (BN2d and BN1d, threaded).
    #[test]
    fn f32_matches_f64() {
        let dev = Device::Cpu;
        for dims in [vec![16, 8, 14, 14], vec![32, 2048]] {
            let channels = dims[1];
            let x64 = (Tensor::randn(0f64, 1.5, dims.as_slice(), &dev).unwrap() - 3.0).unwrap();
            let g64 = Tensor::randn(0f64, 1.0, dims.as_slice(), &dev).unwrap();
            let gamma = Tensor::randn(1f64, 0.5, channels, &dev).unwrap();
            let beta = Tensor::randn(0f64, 0.5, channels, &dev).unwrap();
            let mut results = Vec::new();
            for dtype in [DType::F64, DType::F32] {
                let (varmap, bn) = layer(channels, dtype, Some((&gamma, &beta)));
                let x = Var::from_tensor(&x64.to_dtype(dtype).unwrap()).unwrap();
                let out = bn.forward_t(x.as_tensor(), true).unwrap();
                let grads = out.mul(&g64.to_dtype(dtype).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                let grad = |t: &Tensor| grads.get(t).unwrap().clone();
                let (w, b) = (param(&varmap, "weight"), param(&varmap, "bias"));
                let (mean, var) = bn.running();
                results.push([out, grad(x.as_tensor()), grad(w.as_tensor()), grad(b.as_tensor()), mean, var]);
            }
            let names = ["output", "grad_x", "grad_weight", "grad_bias", "running_mean", "running_var"];
            for ((exact, single), name) in results[0].iter().zip(&results[1]).zip(names) {
                assert_eq!(single.dtype(), DType::F32, "{name}");
                let scale = values(exact).iter().fold(1f64, |m, v| m.max(v.abs()));
                let diff = max_diff(exact, single) / scale;
                assert!(diff < 1e-5, "{dims:?} {name}: relative difference {diff}");
            }
        }
    }

    /// The same input gives the same output and gradients bit for bit (threaded shapes).
    #[test]
    fn train_op_is_deterministic() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (32, 16, 8, 8), &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, (32, 16, 8, 8), &dev).unwrap();
        let run = || {
            let (varmap, bn) = layer(16, DType::F32, None);
            let x = Var::from_tensor(&x).unwrap();
            let out = bn.forward_t(x.as_tensor(), true).unwrap();
            let grads = out.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
            let bits = |t: &Tensor| -> Vec<u32> {
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
            };
            let mut all = bits(&out);
            all.extend(bits(grads.get(x.as_tensor()).unwrap()));
            all.extend(bits(grads.get(param(&varmap, "weight").as_tensor()).unwrap()));
            all.extend(bits(&bn.running().1));
            all
        };
        assert!(run() == run());
    }

    /// Forward and gradient against the formula, bit for bit, f32 and f64, through the op and
    /// through the candle-ops path; 0 and negative values included, and a threaded size.
    #[test]
    fn leaky_relu_matches_the_formula() {
        let dev = Device::Cpu;
        let slope = 0.3;
        let mut xs = vec![0.0, -0.0, -1.5, 2.25, -1e-8, 1e-8, 3.0, -7.0];
        let random = Tensor::randn(0f64, 1.0, 70_000, &dev).unwrap().to_vec1::<f64>().unwrap();
        xs.extend(random);
        xs.extend([0.0; 5]);
        let gs: Vec<f64> = (0..xs.len()).map(|i| 1.0 + (i % 7) as f64 * 0.25).collect();
        for dtype in [DType::F32, DType::F64] {
            let x = Var::from_tensor(&Tensor::new(xs.as_slice(), &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
            let g = Tensor::new(gs.as_slice(), &dev).unwrap().to_dtype(dtype).unwrap();
            // The formula in the tensor's own precision.
            let (xv, gv) = (values(x.as_tensor()), values(&g));
            let round = |v: f64| if dtype == DType::F32 { v as f32 as f64 } else { v };
            let slope_t = round(slope);
            let expected_out: Vec<f64> = xv.iter().map(|&v| if v > 0.0 { v } else { round(v * slope_t) }).collect();
            let expected_grad: Vec<f64> =
                xv.iter().zip(&gv).map(|(&v, &g)| if v > 0.0 { g } else { round(g * slope_t) }).collect();
            for (path, out) in [
                ("op", leaky_relu(x.as_tensor(), slope).unwrap()),
                ("candle ops", leaky_relu_with_candle_ops(x.as_tensor(), slope).unwrap()),
            ] {
                assert_eq!(out.dtype(), dtype);
                assert!(values(&out) == expected_out, "{path} {dtype:?} output");
                let grads = out.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
                let grad = values(grads.get(x.as_tensor()).unwrap());
                assert!(grad == expected_grad, "{path} {dtype:?} gradient");
                // At exactly 0 the gradient is the slope's, as in PyTorch.
                assert_eq!(grad[0], round(gv[0] * slope_t), "{path} {dtype:?} gradient at 0");
            }
        }
    }

    /// Before the running statistics converge, train and eval outputs differ; with running
    /// statistics equal to the batch's (biased variance) eval reproduces the train output.
    #[test]
    fn eval_uses_the_running_statistics() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f64, 2.0, (6, 3, 4, 4), &dev).unwrap() + 1.0).unwrap();
        let gamma = Tensor::new(&[1.5f64, 0.5, -1.0], &dev).unwrap();
        let beta = Tensor::new(&[0.1f64, -0.2, 0.3], &dev).unwrap();
        let (_varmap, bn) = layer(3, DType::F64, Some((&gamma, &beta)));
        let train = bn.forward_t(&x, true).unwrap();
        let eval = bn.forward_t(&x, false).unwrap();
        assert!(max_diff(&train, &eval) > 0.1, "eval should use the running statistics, not the batch's");

        let (_, mean, var) = train_with_candle_ops(&x, &gamma, &beta, 1e-3).unwrap();
        bn.set_running(&mean, &var).unwrap();
        let eval = bn.forward_t(&x, false).unwrap();
        assert!(max_diff(&train, &eval) < 1e-12, "{}", max_diff(&train, &eval));
        assert!(values(&bn.running().0) == values(&mean));
    }

    #[test]
    fn set_running_names_a_wrong_shape() {
        let (_varmap, bn) = layer(4, DType::F32, None);
        let good = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let bad = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        let err = bn.set_running(&good, &bad).unwrap_err().to_string();
        assert!(err.contains("running variance must be (4,), got [2, 2]"), "{err}");
        let err = bn.set_running(&bad, &good).unwrap_err().to_string();
        assert!(err.contains("running mean must be (4,), got [2, 2]"), "{err}");
        // A failed restore leaves the statistics as they were.
        assert!(values(&bn.running().1) == vec![1.0; 4]);
    }

    /// gamma and beta are the VarMap's only variables: the running statistics never reach the
    /// optimizer, and a train step moves them without touching the VarMap.
    #[test]
    fn running_statistics_stay_out_of_the_varmap() {
        let (varmap, bn) = layer(4, DType::F32, None);
        let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["bias", "weight"]);
        let x = Tensor::randn(3f32, 1.0, (8, 4), &Device::Cpu).unwrap();
        bn.forward_t(&x, true).unwrap();
        assert!(values(&bn.running().0).iter().all(|&m| m > 0.0));
        assert_eq!(varmap.all_vars().len(), 2);
    }

    #[test]
    fn a_wrong_channel_count_is_an_error() {
        let (_varmap, bn) = layer(4, DType::F32, None);
        let x = Tensor::zeros((2, 3, 5, 5), DType::F32, &Device::Cpu).unwrap();
        let err = bn.forward_t(&x, true).unwrap_err().to_string();
        assert!(err.contains("(batch, 4, ...), got [2, 3, 5, 5]"), "{err}");
        let one = Tensor::zeros((1, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(bn.forward_t(&one, true).is_err(), "one value a channel cannot be trained on");
    }

    /// The layer moves to the job's thread.
    #[test]
    fn batch_norm_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<BatchNorm>();
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use candle_core::{Device, Var};
    use std::time::Instant;

    /// "median (min)" of the times in ms: on a shared machine the minimum is the layer's own cost.
    fn summary(mut times: Vec<f64>) -> String {
        times.sort_by(f64::total_cmp);
        format!("{:.2} ({:.2})", times[times.len() / 2], times[0])
    }

    /// DCGAN layer timings at batch 256, f32, with the allocator settings of the worker binary
    /// (src/main.rs keeps freed buffers in the heap; here glibc's environment does it):
    /// `MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824 cargo test --release
    /// -p sweep-worker gan::layers::timing -- --ignored --nocapture`.
    /// fwd: the layer call; bwd: the op's backward (what candle's `backward()` calls; candle then adds
    /// each gradient into a zeroed accumulator, as for any op); full: `out.sum_all().backward()`.
    /// PyTorch's side: `torch.set_num_threads(2)`, `nn.BatchNorm1d/2d(C, eps=1e-3, momentum=0.01)` in
    /// train mode and `nn.LeakyReLU(0.3)` on the same shapes, fwd `layer(x)`, bwd `out.backward(g)`.
    #[test]
    #[ignore]
    fn layer_times() {
        let dev = Device::Cpu;
        let shapes: [&[usize]; 3] = [&[256, 12544], &[256, 128, 7, 7], &[256, 64, 14, 14]];
        let runs = 15;
        for dims in shapes {
            let channels = dims[1];
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, dims, &dev).unwrap()).unwrap();
            let g = Tensor::randn(0f32, 1.0, dims, &dev).unwrap();
            let varmap = candle_nn::VarMap::new();
            let bn =
                BatchNorm::new(channels, 1e-3, 0.01, candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &dev))
                    .unwrap();
            let (weight, bias) = (bn.weight.clone(), bn.bias.clone());
            let (mut fwd, mut bwd, mut full) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..runs {
                let s = Instant::now();
                let out = bn.forward_t(x.as_tensor(), true).unwrap();
                fwd.push(s.elapsed().as_secs_f64() * 1e3);
                let stats = Arc::new(OnceLock::new());
                let op = BatchNormTrain { eps: 1e-3, leaky: None, stats: Arc::clone(&stats) };
                let out2 = x.as_tensor().apply_op3_no_bwd(&weight, &bias, &op).unwrap();
                let s = Instant::now();
                let grads = op.bwd(x.as_tensor(), &weight, &bias, &out2, &g).unwrap();
                bwd.push(s.elapsed().as_secs_f64() * 1e3);
                drop(grads);
                let s = Instant::now();
                let _ = out.sum_all().unwrap().backward().unwrap();
                full.push(s.elapsed().as_secs_f64() * 1e3);
            }
            println!(
                "batchnorm {dims:?}: fwd {} ms bwd {} ms (full backward() {} ms)",
                summary(fwd),
                summary(bwd),
                summary(full)
            );

            let (mut fwd, mut bwd, mut full) = (Vec::new(), Vec::new(), Vec::new());
            let op = LeakyRelu { slope: 0.3 };
            for _ in 0..runs {
                let s = Instant::now();
                let out = leaky_relu(x.as_tensor(), 0.3).unwrap();
                fwd.push(s.elapsed().as_secs_f64() * 1e3);
                let s = Instant::now();
                let grad = op.bwd(x.as_tensor(), &out, &g).unwrap();
                bwd.push(s.elapsed().as_secs_f64() * 1e3);
                drop(grad);
                let s = Instant::now();
                let _ = out.sum_all().unwrap().backward().unwrap();
                full.push(s.elapsed().as_secs_f64() * 1e3);
            }
            println!(
                "leaky_relu {dims:?}: fwd {} ms bwd {} ms (full backward() {} ms)",
                summary(fwd),
                summary(bwd),
                summary(full)
            );
        }
    }
}
