//! SimpleRNN and LSTM layers whose whole time loop is one candle op with its own backward.
//!
//! candle-nn's LSTM runs a chain of small tensor ops per timestep; training through it costs one
//! graph node per op per step and, when the inputs are sliced step by step, O(T^2) memory traffic in
//! backward (../shared/CANDLE-NOTES.md, pitfall 2). Here [`RecurrenceOp`] does what a fused
//! (cuDNN-style) kernel does, on packed weights `[W_ih | W_hh]`:
//!
//! 1. the input projections of all timesteps, `x_t W_ih^T + b`, come from one gemm per batch row
//!    (`(T x E) * (E x G*H)`), written time-major so each step's block is contiguous; `G` is the
//!    number of gates (1 for SimpleRNN, 4 for LSTM, in PyTorch's and Keras' order i, f, g, o);
//! 2. the recurrence `a_t += h_{t-1} W_hh^T` is one small gemm per step into preallocated buffers,
//!    and the gate nonlinearities run in place over contiguous slices (for f32: polynomial `exp`,
//!    `tanh`, `sigmoid` that vectorise, built for AVX2+FMA where the CPU has them);
//! 3. backward walks time in reverse (BPTT) over the kept activations (gates, cell states and
//!    their tanh), giving d`a`; from it d`W_hh` is one gemm over all steps, d`W_ih` and d`x` one
//!    gemm per batch row, d`b` a sum.
//!
//! The batch is cut into one contiguous chunk per thread and each chunk runs on its own thread:
//! batch rows are independent, so there is no per-step synchronisation. Each row's arithmetic is the
//! same in any chunk, so outputs and d`x` do not depend on the thread count; weight gradients are
//! summed over chunks in chunk order, so they depend on it (fixed on one machine).
//!
//! Shapes: `x (B, T, E)`, `W_ih (G*H, E)`, `W_hh (G*H, H)`, `b (G*H)` (PyTorch's layout, with
//! `b_ih + b_hh` folded into one bias as Keras has it); the output is every hidden state
//! `(B, T, H)`; initial states are zero. The op runs on CPU in f32 and f64; on other devices
//! [`Recurrent::sequence`] falls back to [`Recurrent::sequence_reference`], the same maths as plain
//! candle ops (slower, but correct), which the tests also use as the oracle.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Storage, Tensor, D};

use crate::jobs::gemm::{contiguous, gemm};

/// Which recurrent cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellKind {
    /// Keras' SimpleRNN / PyTorch's `nn.RNN(nonlinearity="tanh")`: `h_t = tanh(a_t)`.
    Rnn,
    /// LSTM with gates i, f, g, o: `c_t = f c_{t-1} + i g`, `h_t = o tanh(c_t)`.
    Lstm,
}

impl CellKind {
    /// Gate blocks per hidden unit in `W_ih` / `W_hh`.
    pub fn gates(self) -> usize {
        match self {
            CellKind::Rnn => 1,
            CellKind::Lstm => 4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CellKind::Rnn => "simple-rnn-recurrence",
            CellKind::Lstm => "lstm-recurrence",
        }
    }
}

/// A float type the recurrence runs in, with its activation kernels over slices.
trait Real:
    Copy
    + Send
    + Sync
    + 'static
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    fn sigmoid_in_place(xs: &mut [Self]);
    fn tanh_in_place(xs: &mut [Self]);
    /// `out[i] = tanh(xs[i])`.
    fn tanh_into(xs: &[Self], out: &mut [Self]);
    /// A buffer of `len` values whose contents are unspecified (callers overwrite them).
    fn buffer(len: usize) -> Vec<Self> {
        vec![Self::ZERO; len]
    }
    /// Hands a buffer back for reuse.
    fn recycle(_buffer: Vec<Self>) {}
}

/// Large f32 buffers of finished steps, reused by the next ones: a train step needs the same
/// sizes every time, and fresh multi-megabyte allocations cost page faults on every touch.
static F32_POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());
/// Buffers kept at most; a step of one layer uses about six.
const POOL_BUFFERS: usize = 16;

/// `e^x` for f32 in straight-line arithmetic the compiler vectorises: `x = n ln2 + r` with `n`
/// rounded by the 1.5 * 2^23 trick, a degree-6 Taylor polynomial for `e^r` (|r| <= ln2 / 2,
/// relative error below 2e-7), and `2^n` built in the exponent bits.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[inline(always)]
fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// `tanh(x) = sign(x) (1 - e^{-2|x|}) / (1 + e^{-2|x|})`: no overflow, absolute error ~1e-7.
#[inline(always)]
fn tanh_f32(x: f32) -> f32 {
    let t = exp_f32(-2.0 * x.abs());
    ((1.0 - t) / (1.0 + t)).copysign(x)
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn sigmoid_in_place(xs: &mut [Self]) {
        xs.iter_mut().for_each(|x| *x = sigmoid_f32(*x));
    }
    #[inline(always)]
    fn tanh_in_place(xs: &mut [Self]) {
        xs.iter_mut().for_each(|x| *x = tanh_f32(*x));
    }
    #[inline(always)]
    fn tanh_into(xs: &[Self], out: &mut [Self]) {
        out.iter_mut().zip(xs).for_each(|(o, x)| *o = tanh_f32(*x));
    }
    fn buffer(len: usize) -> Vec<Self> {
        let mut pool = F32_POOL.lock().unwrap_or_else(|p| p.into_inner());
        // The smallest pooled buffer that fits, else a new one.
        let best = (0..pool.len()).filter(|&i| pool[i].capacity() >= len).min_by_key(|&i| pool[i].capacity());
        let mut buffer = match best {
            Some(i) => pool.swap_remove(i),
            None => return vec![0.0; len],
        };
        drop(pool);
        if buffer.len() >= len {
            buffer.truncate(len);
        } else {
            buffer.resize(len, 0.0);
        }
        buffer
    }
    fn recycle(buffer: Vec<Self>) {
        if buffer.capacity() < 1 << 16 {
            return;
        }
        let mut pool = F32_POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_BUFFERS {
            pool.push(buffer);
        }
    }
}

/// f64 runs the exact functions: it is the precision the PyTorch fixtures are checked in.
impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn sigmoid_in_place(xs: &mut [Self]) {
        xs.iter_mut().for_each(|x| *x = 1.0 / (1.0 + (-*x).exp()));
    }
    fn tanh_in_place(xs: &mut [Self]) {
        xs.iter_mut().for_each(|x| *x = x.tanh());
    }
    fn tanh_into(xs: &[Self], out: &mut [Self]) {
        out.iter_mut().zip(xs).for_each(|(o, x)| *o = x.tanh());
    }
}

/// Sizes of one application of the op.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    steps: usize,
    /// Input features per step (`E`).
    input: usize,
    hidden: usize,
    /// `G * hidden`.
    width: usize,
    /// The op outputs only the last hidden state `(B, H)` (and gets only its gradient).
    last_only: bool,
}

impl Dims {
    /// Row length of the packed weights `[W_ih | W_hh]`.
    fn packed(&self) -> usize {
        self.input + self.hidden
    }
}

/// What forward keeps of one batch chunk for backward, time-major.
struct Saved<T> {
    /// First batch row of the chunk and its row count.
    start: usize,
    rows: usize,
    /// Activated gates `(T, rows, G*H)` (for SimpleRNN: the hidden states).
    acts: Vec<T>,
    /// Cell states `(T, rows, H)` and their tanh (LSTM only).
    cells: Vec<T>,
    cells_tanh: Vec<T>,
    /// Hidden states `(T, rows, H)`.
    hidden: Vec<T>,
}

enum SavedAny {
    F32(Vec<Saved<f32>>),
    F64(Vec<Saved<f64>>),
}

impl<T: Real> Saved<T> {
    fn recycle(self) {
        for buffer in [self.acts, self.cells, self.cells_tanh, self.hidden] {
            T::recycle(buffer);
        }
    }
}

impl SavedAny {
    fn recycle(self) {
        match self {
            SavedAny::F32(all) => all.into_iter().for_each(Saved::recycle),
            SavedAny::F64(all) => all.into_iter().for_each(Saved::recycle),
        }
    }
}

/// The recurrence over input projections (without bias), `W_hh` and the bias; see the module
/// header.
pub struct RecurrenceOp {
    kind: CellKind,
    /// Output only the last hidden state.
    last_only: bool,
    /// Keep activations for backward (training); inference skips it.
    keep: bool,
    threads: usize,
    saved: Mutex<Option<SavedAny>>,
}

impl RecurrenceOp {
    fn new(kind: CellKind, last_only: bool, keep: bool) -> Self {
        let threads = candle_core::utils::get_num_threads().max(1);
        RecurrenceOp { kind, last_only, keep, threads, saved: Mutex::new(None) }
    }
}

/// Forward of batch rows `start..start + rows` of `x (B, T, E)` with packed weights
/// `w (G*H, E + H)` = `[W_ih | W_hh]`: returns what backward needs.
#[inline(always)]
fn forward_chunk<T: Real>(
    kind: CellKind,
    d: Dims,
    x: &[T],
    w: &[T],
    bias: &[T],
    start: usize,
    rows: usize,
) -> Saved<T> {
    let (t_len, e, h, g, p) = (d.steps, d.input, d.hidden, d.width, d.packed());
    // Every element of these is written below before it is read.
    let mut acts = T::buffer(t_len * rows * g);
    let mut hidden = T::buffer(t_len * rows * h);
    let lstm = kind == CellKind::Lstm;
    let mut cells = if lstm { T::buffer(t_len * rows * h) } else { Vec::new() };
    let mut cells_tanh = if lstm { T::buffer(t_len * rows * h) } else { Vec::new() };
    // Input projections of every step, time-major: for each batch row, (T x E) * W_ih^T (E x G*H)
    // into rows t*rows + b of `acts`; then the bias.
    for b in 0..rows {
        let x_b = &x[(start + b) * t_len * e..][..t_len * e];
        gemm((t_len, g, e), &mut acts[b * g..], (rows * g, 1), false, x_b, (e, 1), w, (1, p), T::ONE, T::ZERO);
    }
    for row in acts.chunks_exact_mut(g) {
        for (a, c) in row.iter_mut().zip(bias) {
            *a = *a + *c;
        }
    }
    let w_hh = &w[e..];
    for t in 0..t_len {
        let (before, rest) = hidden.split_at_mut(t * rows * h);
        let a_t = &mut acts[t * rows * g..(t + 1) * rows * g];
        if t > 0 {
            let h_prev = &before[(t - 1) * rows * h..];
            // a_t += h_{t-1} (rows x H) * W_hh^T (H x G*H); W_hh sits in the packed rows after W_ih.
            gemm((rows, g, h), a_t, (g, 1), true, h_prev, (h, 1), w_hh, (1, p), T::ONE, T::ZERO);
        }
        let h_t = &mut rest[..rows * h];
        match kind {
            CellKind::Rnn => {
                T::tanh_in_place(a_t);
                h_t.copy_from_slice(a_t);
            }
            CellKind::Lstm => {
                let (c_before, c_rest) = cells.split_at_mut(t * rows * h);
                let c_t = &mut c_rest[..rows * h];
                let tc_t = &mut cells_tanh[t * rows * h..(t + 1) * rows * h];
                for b in 0..rows {
                    let gates = &mut a_t[b * g..(b + 1) * g];
                    let (ifg, o) = gates.split_at_mut(3 * h);
                    let (i_f, gg) = ifg.split_at_mut(2 * h);
                    T::sigmoid_in_place(i_f);
                    T::tanh_in_place(gg);
                    T::sigmoid_in_place(o);
                    let (i, f) = i_f.split_at(h);
                    let c_row = &mut c_t[b * h..(b + 1) * h];
                    if t > 0 {
                        let c_prev = &c_before[((t - 1) * rows + b) * h..][..h];
                        for j in 0..h {
                            c_row[j] = f[j] * c_prev[j] + i[j] * gg[j];
                        }
                    } else {
                        for j in 0..h {
                            c_row[j] = i[j] * gg[j];
                        }
                    }
                    let tc_row = &mut tc_t[b * h..(b + 1) * h];
                    T::tanh_into(c_row, tc_row);
                    let h_row = &mut h_t[b * h..(b + 1) * h];
                    for j in 0..h {
                        h_row[j] = o[j] * tc_row[j];
                    }
                }
            }
        }
    }
    Saved { start, rows, acts, cells, cells_tanh, hidden }
}

/// Backward of one chunk: writes its rows of d`x` (`dx`, this chunk's rows only, batch-major)
/// and returns its shares of the packed d`[W_ih | W_hh]` and d`bias`.
#[inline(always)]
fn backward_chunk<T: Real>(
    kind: CellKind,
    d: Dims,
    saved: &Saved<T>,
    grad: &[T],
    x: &[T],
    w: &[T],
    dx: &mut [T],
) -> (Vec<T>, Vec<T>) {
    let (t_len, e, h, g, p, rows) = (d.steps, d.input, d.hidden, d.width, d.packed(), saved.rows);
    let w_hh = &w[e..];
    // Every element is written in the time loop below.
    let mut da = T::buffer(t_len * rows * g);
    let mut dh_next = vec![T::ZERO; rows * h];
    let mut dc_next = vec![T::ZERO; if kind == CellKind::Lstm { rows * h } else { 0 }];
    let mut dh = vec![T::ZERO; h];
    for t in (0..t_len).rev() {
        let da_t = &mut da[t * rows * g..(t + 1) * rows * g];
        for b in 0..rows {
            let next = &dh_next[b * h..(b + 1) * h];
            if d.last_only && t + 1 < t_len {
                dh.copy_from_slice(next);
            } else {
                let at = if d.last_only { (saved.start + b) * h } else { ((saved.start + b) * t_len + t) * h };
                let grad_row = &grad[at..][..h];
                for j in 0..h {
                    dh[j] = grad_row[j] + next[j];
                }
            }
            let out = &mut da_t[b * g..(b + 1) * g];
            match kind {
                CellKind::Rnn => {
                    let hv = &saved.hidden[(t * rows + b) * h..][..h];
                    for j in 0..h {
                        out[j] = dh[j] * (T::ONE - hv[j] * hv[j]);
                    }
                }
                CellKind::Lstm => {
                    let gates = &saved.acts[(t * rows + b) * g..][..g];
                    let (i, rest) = gates.split_at(h);
                    let (f, rest) = rest.split_at(h);
                    let (gg, o) = rest.split_at(h);
                    let tc = &saved.cells_tanh[(t * rows + b) * h..][..h];
                    let dc_row = &mut dc_next[b * h..(b + 1) * h];
                    let (d_i, rest) = out.split_at_mut(h);
                    let (d_f, rest) = rest.split_at_mut(h);
                    let (d_g, d_o) = rest.split_at_mut(h);
                    for j in 0..h {
                        let dc = dc_row[j] + dh[j] * o[j] * (T::ONE - tc[j] * tc[j]);
                        dc_row[j] = dc * f[j];
                        d_i[j] = dc * gg[j] * i[j] * (T::ONE - i[j]);
                        d_g[j] = dc * i[j] * (T::ONE - gg[j] * gg[j]);
                        d_o[j] = dh[j] * tc[j] * o[j] * (T::ONE - o[j]);
                        // d_f needs c_{t-1}: zero at t = 0.
                        d_f[j] = dc * f[j] * (T::ONE - f[j]);
                    }
                    if t > 0 {
                        let c_prev = &saved.cells[((t - 1) * rows + b) * h..][..h];
                        for j in 0..h {
                            d_f[j] = d_f[j] * c_prev[j];
                        }
                    } else {
                        d_f.fill(T::ZERO);
                    }
                }
            }
        }
        if t > 0 {
            // dh_{t-1} = da_t (rows x G*H) * W_hh (G*H x H).
            gemm((rows, h, g), &mut dh_next, (h, 1), false, da_t, (g, 1), w_hh, (p, 1), T::ONE, T::ZERO);
        }
    }
    let mut dw = vec![T::ZERO; g * p];
    // dW_hh (G*H x H) = sum over t >= 1 of da_t^T * h_{t-1}: one gemm with k = (T-1) * rows.
    if t_len > 1 {
        let k = (t_len - 1) * rows;
        gemm((g, h, k), &mut dw[e..], (p, 1), false, &da[rows * g..], (1, g), &saved.hidden, (h, 1), T::ONE, T::ZERO);
    }
    for b in 0..rows {
        let da_b = &da[b * g..];
        let x_b = &x[(saved.start + b) * t_len * e..][..t_len * e];
        // dW_ih (G*H x E) += da_b^T (G*H x T) * x_b (T x E).
        gemm((g, e, t_len), &mut dw, (p, 1), b > 0, da_b, (1, rows * g), x_b, (e, 1), T::ONE, T::ZERO);
        // dx_b (T x E) = da_b (T x G*H) * W_ih (G*H x E).
        gemm((t_len, e, g), &mut dx[b * t_len * e..], (e, 1), false, da_b, (rows * g, 1), w, (p, 1), T::ONE, T::ZERO);
    }
    let mut dbias = vec![T::ZERO; g];
    for row in da.chunks_exact(g) {
        for (acc, v) in dbias.iter_mut().zip(row) {
            *acc = *acc + *v;
        }
    }
    T::recycle(da);
    (dw, dbias)
}

/// The f32 kernels again, compiled for AVX2 and FMA: chosen at run time where the CPU has them.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn forward(
        kind: CellKind,
        d: Dims,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        start: usize,
        rows: usize,
    ) -> Saved<f32> {
        forward_chunk(kind, d, x, w, bias, start, rows)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn backward(
        kind: CellKind,
        d: Dims,
        saved: &Saved<f32>,
        grad: &[f32],
        x: &[f32],
        w: &[f32],
        dx: &mut [f32],
    ) -> (Vec<f32>, Vec<f32>) {
        backward_chunk(kind, d, saved, grad, x, w, dx)
    }
}

/// A float type's chunk kernels, picking the fastest build of them for this CPU.
trait Kernels: Real {
    fn forward(
        kind: CellKind,
        d: Dims,
        x: &[Self],
        w: &[Self],
        bias: &[Self],
        start: usize,
        rows: usize,
    ) -> Saved<Self>;
    #[allow(clippy::too_many_arguments)]
    fn backward(
        kind: CellKind,
        d: Dims,
        s: &Saved<Self>,
        grad: &[Self],
        x: &[Self],
        w: &[Self],
        dx: &mut [Self],
    ) -> (Vec<Self>, Vec<Self>);
}

fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Kernels for f32 {
    fn forward(kind: CellKind, d: Dims, x: &[f32], w: &[f32], bias: &[f32], start: usize, rows: usize) -> Saved<f32> {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { avx2::forward(kind, d, x, w, bias, start, rows) };
        }
        forward_chunk(kind, d, x, w, bias, start, rows)
    }
    fn backward(
        kind: CellKind,
        d: Dims,
        s: &Saved<f32>,
        grad: &[f32],
        x: &[f32],
        w: &[f32],
        dx: &mut [f32],
    ) -> (Vec<f32>, Vec<f32>) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { avx2::backward(kind, d, s, grad, x, w, dx) };
        }
        backward_chunk(kind, d, s, grad, x, w, dx)
    }
}

impl Kernels for f64 {
    fn forward(kind: CellKind, d: Dims, x: &[f64], w: &[f64], bias: &[f64], start: usize, rows: usize) -> Saved<f64> {
        forward_chunk(kind, d, x, w, bias, start, rows)
    }
    fn backward(
        kind: CellKind,
        d: Dims,
        s: &Saved<f64>,
        grad: &[f64],
        x: &[f64],
        w: &[f64],
        dx: &mut [f64],
    ) -> (Vec<f64>, Vec<f64>) {
        backward_chunk(kind, d, s, grad, x, w, dx)
    }
}

/// Contiguous rows of the batch per thread: `threads` chunks at most, none empty.
fn chunks(batch: usize, threads: usize) -> Vec<(usize, usize)> {
    let n = threads.clamp(1, batch.max(1));
    let base = batch / n;
    let extra = batch % n;
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    for i in 0..n {
        let rows = base + usize::from(i < extra);
        if rows > 0 {
            out.push((start, rows));
        }
        start += rows;
    }
    out
}

fn forward_all<T: Kernels>(
    kind: CellKind,
    d: Dims,
    x: &[T],
    w: &[T],
    bias: &[T],
    threads: usize,
) -> (Vec<T>, Vec<Saved<T>>) {
    let parts = chunks(d.batch, threads);
    let saved: Vec<Saved<T>> = if parts.len() == 1 {
        vec![T::forward(kind, d, x, w, bias, 0, d.batch)]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = parts
                .iter()
                .map(|&(start, rows)| scope.spawn(move || T::forward(kind, d, x, w, bias, start, rows)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
        })
    };
    // Output (B, T, H) batch-major, or (B, H) of the last step.
    let (steps, first) = if d.last_only { (1, d.steps.saturating_sub(1)) } else { (d.steps, 0) };
    let mut out = vec![T::ZERO; d.batch * steps * d.hidden];
    for s in &saved {
        for b in 0..s.rows {
            for t in first..d.steps {
                out[((s.start + b) * steps + t - first) * d.hidden..][..d.hidden]
                    .copy_from_slice(&s.hidden[(t * s.rows + b) * d.hidden..][..d.hidden]);
            }
        }
    }
    (out, saved)
}

/// d`x`, the packed d`[W_ih | W_hh]` and d`bias`.
fn backward_all<T: Kernels>(
    kind: CellKind,
    d: Dims,
    saved: &[Saved<T>],
    grad: &[T],
    x: &[T],
    w: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut dx = vec![T::ZERO; d.batch * d.steps * d.input];
    let mut slices = Vec::with_capacity(saved.len());
    let mut rest = dx.as_mut_slice();
    for s in saved {
        let (mine, tail) = rest.split_at_mut(s.rows * d.steps * d.input);
        slices.push(mine);
        rest = tail;
    }
    let partials: Vec<(Vec<T>, Vec<T>)> = if saved.len() == 1 {
        vec![T::backward(kind, d, &saved[0], grad, x, w, slices.remove(0))]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = saved
                .iter()
                .zip(slices)
                .map(|(s, dx)| scope.spawn(move || T::backward(kind, d, s, grad, x, w, dx)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
        })
    };
    // Sum the chunks' shares in chunk order: the same order for the same thread count.
    let (mut dw, mut dbias) = partials[0].clone();
    for (pw, pb) in &partials[1..] {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a = *a + *b);
        dbias.iter_mut().zip(pb).for_each(|(a, b)| *a = *a + *b);
    }
    (dx, dw, dbias)
}

impl RecurrenceOp {
    fn dims(&self, x: &Layout, w: &Layout, bias: &Layout) -> candle_core::Result<Dims> {
        let (batch, steps, input) = match x.dims() {
            &[b, t, e] => (b, t, e),
            other => candle_core::bail!("recurrence: x must be (batch, steps, features), got {other:?}"),
        };
        let gates = self.kind.gates();
        let (width, hidden) = match w.dims() {
            &[width, packed] if packed > input && width == gates * (packed - input) => (width, packed - input),
            other => candle_core::bail!(
                "recurrence: packed [W_ih | W_hh] must be (gates*hidden, {input} + hidden) with {gates} gates, got {other:?}"
            ),
        };
        if bias.dims() != [width] {
            candle_core::bail!("recurrence: bias must be ({width}), got {:?}", bias.dims());
        }
        if steps == 0 {
            candle_core::bail!("recurrence: a sequence needs at least one step");
        }
        Ok(Dims { batch, steps, input, hidden, width, last_only: self.last_only })
    }

    fn run<T: Kernels>(&self, d: Dims, x: &[T], w: &[T], bias: &[T]) -> (Vec<T>, Vec<Saved<T>>) {
        forward_all(self.kind, d, x, w, bias, self.threads)
    }
}

impl CustomOp3 for RecurrenceOp {
    fn name(&self) -> &'static str {
        self.kind.name()
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
        let d = self.dims(l1, l2, l3)?;
        let shape =
            if d.last_only { Shape::from((d.batch, d.hidden)) } else { Shape::from((d.batch, d.steps, d.hidden)) };
        let (storage, saved) = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => {
                let (out, saved) =
                    self.run(d, contiguous(x, l1, "x")?, contiguous(w, l2, "weights")?, contiguous(b, l3, "bias")?);
                (CpuStorage::F32(out), SavedAny::F32(saved))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => {
                let (out, saved) =
                    self.run(d, contiguous(x, l1, "x")?, contiguous(w, l2, "weights")?, contiguous(b, l3, "bias")?);
                (CpuStorage::F64(out), SavedAny::F64(saved))
            }
            _ => candle_core::bail!("recurrence: x, weights and bias must all be f32 or all f64"),
        };
        if self.keep {
            *self.saved.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved);
        } else {
            saved.recycle();
        }
        Ok((storage, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = self.dims(x.layout(), w.layout(), bias.layout())?;
        let saved = self.saved.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(saved) = saved else {
            candle_core::bail!("recurrence: backward ran twice or without a training forward");
        };
        let device = x.device();
        let grad_res = grad_res.contiguous()?;
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        let (grad_storage, grad_layout) = grad_res.storage_and_layout();
        let (x_storage, x_layout) = x.storage_and_layout();
        let (w_storage, w_layout) = w.storage_and_layout();
        let (dx, dw, db) = match (saved, &*grad_storage, &*x_storage, &*w_storage) {
            (
                SavedAny::F32(saved),
                Storage::Cpu(CpuStorage::F32(grad)),
                Storage::Cpu(CpuStorage::F32(xs)),
                Storage::Cpu(CpuStorage::F32(ws)),
            ) => {
                let (grad, xs, ws) = (
                    contiguous(grad, grad_layout, "grad")?,
                    contiguous(xs, x_layout, "x")?,
                    contiguous(ws, w_layout, "w")?,
                );
                let (dx, dw, db) = backward_all(self.kind, d, &saved, grad, xs, ws);
                saved.into_iter().for_each(Saved::recycle);
                (Tensor::new(dx, device)?, Tensor::new(dw, device)?, Tensor::new(db, device)?)
            }
            (
                SavedAny::F64(saved),
                Storage::Cpu(CpuStorage::F64(grad)),
                Storage::Cpu(CpuStorage::F64(xs)),
                Storage::Cpu(CpuStorage::F64(ws)),
            ) => {
                let (grad, xs, ws) = (
                    contiguous(grad, grad_layout, "grad")?,
                    contiguous(xs, x_layout, "x")?,
                    contiguous(ws, w_layout, "w")?,
                );
                let (dx, dw, db) = backward_all(self.kind, d, &saved, grad, xs, ws);
                (Tensor::new(dx, device)?, Tensor::new(dw, device)?, Tensor::new(db, device)?)
            }
            _ => candle_core::bail!("recurrence: backward on other storage than the forward's CPU f32/f64"),
        };
        Ok((Some(dx.reshape((d.batch, d.steps, d.input))?), Some(dw.reshape((d.width, d.packed()))?), Some(db)))
    }
}

/// A recurrent layer's weights, in PyTorch's layout (see the module header).
#[derive(Debug, Clone)]
pub struct Recurrent {
    pub kind: CellKind,
    pub w_ih: Tensor,
    pub w_hh: Tensor,
    pub bias: Tensor,
}

impl Recurrent {
    pub fn new(kind: CellKind, w_ih: Tensor, w_hh: Tensor, bias: Tensor) -> candle_core::Result<Self> {
        let (width, _input) = w_ih.dims2()?;
        let (width_hh, hidden) = w_hh.dims2()?;
        if width != kind.gates() * hidden || width_hh != width || bias.dims1()? != width {
            candle_core::bail!(
                "recurrent weights do not fit: W_ih {:?}, W_hh {:?}, bias {:?} for {} gates",
                w_ih.dims(),
                w_hh.dims(),
                bias.dims(),
                kind.gates()
            );
        }
        Ok(Recurrent { kind, w_ih, w_hh, bias })
    }

    pub fn hidden(&self) -> usize {
        self.w_hh.dims()[1]
    }

    /// Input projections of all timesteps in one matmul, without the bias: `(B, T, E)` ->
    /// `(B, T, G*H)`.
    fn project(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, e) = x.dims3()?;
        let flat = x.reshape((b * t, e))?;
        flat.matmul(&self.w_ih.t()?)?.reshape((b, t, self.w_ih.dims()[0]))
    }

    /// All hidden states `(B, T, H)` for inputs `(B, T, E)`; `train` keeps what backward needs.
    pub fn sequence(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if !matches!(x.device(), Device::Cpu) || !matches!(x.dtype(), DType::F32 | DType::F64) {
            return self.sequence_reference(x);
        }
        // One weight tensor [W_ih | W_hh] (G*H, E + H), as cuDNN packs them; `cat`'s backward
        // hands each part its gradient.
        self.fused(x, false, train)
    }

    fn fused(&self, x: &Tensor, last_only: bool, train: bool) -> candle_core::Result<Tensor> {
        let packed = Tensor::cat(&[&self.w_ih, &self.w_hh], 1)?;
        let op = RecurrenceOp::new(self.kind, last_only, train);
        x.contiguous()?.apply_op3(&packed, &self.bias.contiguous()?, op)
    }

    /// The last hidden state `(B, H)` for inputs `(B, T, E)`; the fused op then keeps and returns
    /// only that state, and gets only its gradient.
    pub fn last(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if !matches!(x.device(), Device::Cpu) || !matches!(x.dtype(), DType::F32 | DType::F64) {
            let all = self.sequence_reference(x)?;
            let steps = all.dim(1)?;
            return all.narrow(1, steps - 1, 1)?.squeeze(1);
        }
        self.fused(x, true, train)
    }

    /// The same recurrence as plain candle ops, one timestep at a time: the oracle of the tests and
    /// the path on devices the fused op does not cover.
    pub fn sequence_reference(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let xproj = self.project(x)?;
        self.recur_reference(&xproj)
    }

    fn recur_reference(&self, xproj: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t_len, _) = xproj.dims3()?;
        let h_size = self.hidden();
        let mut h = Tensor::zeros((b, h_size), xproj.dtype(), xproj.device())?;
        let mut c = h.clone();
        let w_t = self.w_hh.t()?;
        let mut outputs = Vec::with_capacity(t_len);
        for t in 0..t_len {
            let a = xproj.narrow(1, t, 1)?.squeeze(1)?.add(&h.matmul(&w_t)?)?.broadcast_add(&self.bias)?;
            h = match self.kind {
                CellKind::Rnn => a.tanh()?,
                CellKind::Lstm => {
                    let gates = a.chunk(4, D::Minus1)?;
                    let i = candle_nn::ops::sigmoid(&gates[0])?;
                    let f = candle_nn::ops::sigmoid(&gates[1])?;
                    let g = gates[2].tanh()?;
                    let o = candle_nn::ops::sigmoid(&gates[3])?;
                    c = f.mul(&c)?.add(&i.mul(&g)?)?;
                    o.mul(&c.tanh()?)?
                }
            };
            outputs.push(h.unsqueeze(1)?);
        }
        Tensor::cat(&outputs, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[derive(serde::Deserialize)]
    struct Fixed {
        shape: Vec<usize>,
        data: Vec<f64>,
    }

    impl Fixed {
        fn tensor(&self) -> Tensor {
            Tensor::from_vec(self.data.clone(), self.shape.as_slice(), &Device::Cpu).expect("fixture tensor")
        }
    }

    fn fixture() -> serde_json::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/recurrent_torch.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("read recurrent fixture")).expect("parse fixture")
    }

    fn field(cell: &serde_json::Value, name: &str) -> Tensor {
        let fixed: Fixed = serde_json::from_value(cell[name].clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        fixed.tensor()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims(), "shapes differ");
        a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    /// Forward and every gradient of `loss = sum(h_last * r) + sum(outputs * R)` against PyTorch,
    /// through the fused op and through the op-by-op reference.
    fn check_against_torch(kind: CellKind, key: &str, fused: bool) {
        let all = fixture();
        let cell = &all[key];
        let x = Var::from_tensor(&field(cell, "x")).unwrap();
        let w_ih = Var::from_tensor(&field(cell, "weight_ih")).unwrap();
        let w_hh = Var::from_tensor(&field(cell, "weight_hh")).unwrap();
        let b_ih = Var::from_tensor(&field(cell, "bias_ih")).unwrap();
        let b_hh = Var::from_tensor(&field(cell, "bias_hh")).unwrap();
        let bias = b_ih.as_tensor().add(b_hh.as_tensor()).unwrap();
        let layer = Recurrent::new(kind, w_ih.as_tensor().clone(), w_hh.as_tensor().clone(), bias).unwrap();
        let outputs = if fused {
            layer.sequence(x.as_tensor(), true).unwrap()
        } else {
            layer.sequence_reference(x.as_tensor()).unwrap()
        };
        let steps = outputs.dim(1).unwrap();
        let last = outputs.narrow(1, steps - 1, 1).unwrap().squeeze(1).unwrap();
        assert!(max_diff(&outputs, &field(cell, "outputs")) < 1e-12, "{key} outputs");
        assert!(max_diff(&last, &field(cell, "h_last")) < 1e-12, "{key} h_last");
        let loss = last
            .mul(&field(cell, "r"))
            .unwrap()
            .sum_all()
            .unwrap()
            .add(&outputs.mul(&field(cell, "R")).unwrap().sum_all().unwrap())
            .unwrap();
        let grads = loss.backward().unwrap();
        for (var, name) in [
            (&x, "grad_x"),
            (&w_ih, "grad_weight_ih"),
            (&w_hh, "grad_weight_hh"),
            (&b_ih, "grad_bias_ih"),
            (&b_hh, "grad_bias_hh"),
        ] {
            let got = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{key}: no gradient for {name}"));
            let diff = max_diff(got, &field(cell, name));
            assert!(diff < 1e-10, "{key} {name}: max difference {diff}");
        }
    }

    #[test]
    fn fused_rnn_matches_pytorch() {
        check_against_torch(CellKind::Rnn, "rnn", true);
    }

    #[test]
    fn fused_lstm_matches_pytorch() {
        check_against_torch(CellKind::Lstm, "lstm", true);
    }

    #[test]
    fn reference_rnn_matches_pytorch() {
        check_against_torch(CellKind::Rnn, "rnn", false);
    }

    #[test]
    fn reference_lstm_matches_pytorch() {
        check_against_torch(CellKind::Lstm, "lstm", false);
    }

    #[test]
    fn fast_f32_functions_are_accurate() {
        let mut worst = (0f64, 0f64, 0f64);
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-3;
            let exact = (x as f64).exp();
            if x < 80.0 {
                worst.0 = worst.0.max(((exp_f32(x) as f64) - exact).abs() / exact);
            }
            worst.1 = worst.1.max(((tanh_f32(x) as f64) - (x as f64).tanh()).abs());
            worst.2 = worst.2.max(((sigmoid_f32(x) as f64) - 1.0 / (1.0 + (-(x as f64)).exp())).abs());
        }
        assert!(worst.0 < 5e-7 && worst.1 < 5e-7 && worst.2 < 5e-7, "relative exp, absolute tanh/sigmoid: {worst:?}");
        assert_eq!(tanh_f32(0.0), 0.0);
        assert_eq!(sigmoid_f32(-1000.0).max(0.0), sigmoid_f32(-1000.0));
    }

    /// The f32 path (fast activations, AVX2 where present) against the op-by-op reference.
    #[test]
    fn fused_f32_matches_the_reference() {
        let dev = Device::Cpu;
        let (b, t, e, h) = (5, 9, 4, 6);
        for kind in [CellKind::Rnn, CellKind::Lstm] {
            let g = kind.gates() * h;
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, e), &dev).unwrap()).unwrap();
            let w_ih = Var::from_tensor(&Tensor::randn(0f32, 0.5, (g, e), &dev).unwrap()).unwrap();
            let w_hh = Var::from_tensor(&Tensor::randn(0f32, 0.5, (g, h), &dev).unwrap()).unwrap();
            let bias = Var::from_tensor(&Tensor::randn(0f32, 0.5, g, &dev).unwrap()).unwrap();
            let weights = Tensor::randn(0f32, 1.0, (b, t, h), &dev).unwrap();
            let layer =
                Recurrent::new(kind, w_ih.as_tensor().clone(), w_hh.as_tensor().clone(), bias.as_tensor().clone())
                    .unwrap();
            let last_weights = weights.narrow(1, t - 1, 1).unwrap().squeeze(1).unwrap();
            // (fused, last only)
            let run = |(fused, last): (bool, bool)| {
                let out = match (fused, last) {
                    (true, false) => layer.sequence(x.as_tensor(), true).unwrap(),
                    (true, true) => layer.last(x.as_tensor(), true).unwrap(),
                    (false, false) => layer.sequence_reference(x.as_tensor()).unwrap(),
                    (false, true) => layer
                        .sequence_reference(x.as_tensor())
                        .unwrap()
                        .narrow(1, t - 1, 1)
                        .unwrap()
                        .squeeze(1)
                        .unwrap(),
                };
                let w = if last { &last_weights } else { &weights };
                let grads = out.mul(w).unwrap().sum_all().unwrap().backward().unwrap();
                let mut all = vec![out.to_dtype(DType::F64).unwrap()];
                for v in [&x, &w_ih, &w_hh, &bias] {
                    all.push(grads.get(v.as_tensor()).expect("gradient").to_dtype(DType::F64).unwrap());
                }
                all
            };
            for last in [false, true] {
                for (i, (a, r)) in run((true, last)).iter().zip(run((false, last))).enumerate() {
                    let diff = max_diff(a, &r);
                    assert!(diff < 2e-5, "{kind:?} last-only {last}: output/gradient {i}: {diff}");
                }
            }
        }
    }

    #[test]
    fn chunking_covers_the_batch_once() {
        for batch in [1, 2, 3, 7, 128] {
            for threads in [1, 2, 3, 16] {
                let parts = chunks(batch, threads);
                assert_eq!(parts.iter().map(|p| p.1).sum::<usize>(), batch);
                let mut next = 0;
                for (start, rows) in parts {
                    assert_eq!(start, next);
                    assert!(rows > 0);
                    next = start + rows;
                }
            }
        }
    }

    /// A batch split over threads gives the same bits as one chunk.
    #[test]
    fn thread_count_does_not_change_results() {
        let dev = Device::Cpu;
        let (b, t, h) = (9, 11, 7);
        for kind in [CellKind::Rnn, CellKind::Lstm] {
            let g = kind.gates() * h;
            let e = 4;
            let host = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let x = host(Tensor::randn(0f32, 1.0, (b, t, e), &dev).unwrap());
            let bias = host(Tensor::randn(0f32, 0.1, g, &dev).unwrap());
            let wv = host(Tensor::randn(0f32, 0.3, (g, e + h), &dev).unwrap());
            let gv = host(Tensor::randn(0f32, 1.0, (b, t, h), &dev).unwrap());
            let d = Dims { batch: b, steps: t, input: e, hidden: h, width: g, last_only: false };
            let (out1, s1) = forward_all(kind, d, &x, &wv, &bias, 1);
            let (out3, s3) = forward_all(kind, d, &x, &wv, &bias, 3);
            assert_eq!(out1, out3);
            let (dx1, _, _) = backward_all(kind, d, &s1, &gv, &x, &wv);
            let (dx3, dw3, _) = backward_all(kind, d, &s3, &gv, &x, &wv);
            assert_eq!(dx1, dx3);
            assert!(dw3.iter().all(|v| v.is_finite()));
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use std::time::Instant;

    /// Phase timings at the IMDB shapes: `cargo test --release -p sweep-worker recurrent_phases -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn recurrent_phases() {
        let dev = Device::Cpu;
        let (b, t, e, h) = (128, 500, 32, 32);
        for kind in [CellKind::Rnn, CellKind::Lstm] {
            let g = kind.gates() * h;
            let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, e), &dev).unwrap()).unwrap();
            let layer = Recurrent::new(
                kind,
                candle_core::Var::from_tensor(&Tensor::randn(0f32, 0.1, (g, e), &dev).unwrap())
                    .unwrap()
                    .as_tensor()
                    .clone(),
                candle_core::Var::from_tensor(&Tensor::randn(0f32, 0.1, (g, h), &dev).unwrap())
                    .unwrap()
                    .as_tensor()
                    .clone(),
                Tensor::zeros(g, DType::F32, &dev).unwrap(),
            )
            .unwrap();
            for _ in 0..3 {
                let s = Instant::now();
                let t1 = s.elapsed();
                let out = layer.last(x.as_tensor(), true).unwrap();
                let t2 = s.elapsed();
                let last = out.sum_all().unwrap();
                let t3 = s.elapsed();
                let _grads = last.backward().unwrap();
                let t4 = s.elapsed();
                println!(
                    "{kind:?}: project {t1:?} recur {:?} narrow+sum {:?} backward {:?}",
                    t2 - t1,
                    t3 - t2,
                    t4 - t3
                );
            }
        }
    }
}
