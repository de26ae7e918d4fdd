//! SimpleRNN and LSTM layers whose whole time loop is one candle op with its own backward.
//!
//! candle-nn's LSTM runs a chain of small tensor ops per timestep; training through it costs one
//! graph node per op per step and, when the inputs are sliced step by step, O(T^2) memory traffic in
//! backward (../shared/CANDLE-NOTES.md, pitfall 2). Here the layer does what a fused kernel does:
//!
//! 1. the inputs of all timesteps are projected in one matmul: `xproj = x W_ih^T + b`, shape
//!    `(B, T, G*H)` with `G` gates (1 for SimpleRNN, 4 for LSTM in PyTorch's and Keras' order
//!    i, f, g, o);
//! 2. [`RecurrenceOp`] runs the recurrence `a_t = xproj_t + h_{t-1} W_hh^T` with one small gemm per
//!    step into preallocated buffers, applies the gate nonlinearities in place, and keeps the
//!    activations for backward;
//! 3. its backward walks time in reverse (BPTT), producing d`xproj` and d`W_hh` (the latter as one
//!    gemm over all steps); candle's autograd carries d`xproj` on to `W_ih`, `b` and the embedding.
//!
//! The batch is cut into one contiguous chunk per thread and each chunk's recurrence runs on its own
//! thread: batch rows are independent, so there is no per-step synchronisation, and the result does
//! not depend on the thread count (each row's arithmetic is the same in any chunk).
//!
//! Shapes: `W_ih (G*H, E)`, `W_hh (G*H, H)`, `b (G*H)` (PyTorch's layout, with `b_ih + b_hh` folded
//! into one bias as Keras has it); the op maps `xproj (B, T, G*H)` and `W_hh` to all hidden states
//! `(B, T, H)`. Initial states are zero. The op runs on CPU in f32 and f64; on other devices
//! [`Recurrent`] falls back to [`Recurrent::sequence_reference`], the same maths as plain candle ops
//! (slower, but correct), which the tests also use as the oracle.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor, D};

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

/// A float type the recurrence runs in.
trait Real: Copy + Send + Sync + 'static + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self> {
    const ZERO: Self;
    const ONE: Self;
    fn mul(self, other: Self) -> Self;
    fn tanh(self) -> Self;
    fn sigmoid(self) -> Self;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn mul(self, other: Self) -> Self {
        self * other
    }
    fn tanh(self) -> Self {
        f32::tanh(self)
    }
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn mul(self, other: Self) -> Self {
        self * other
    }
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
}

/// Sizes of one application of the op.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    steps: usize,
    hidden: usize,
    /// `G * hidden`.
    width: usize,
}

/// What forward keeps of one batch chunk for backward, time-major.
struct Saved<T> {
    /// First batch row of the chunk and its row count.
    start: usize,
    rows: usize,
    /// Activated gates `(T, rows, G*H)` (for SimpleRNN: the hidden states).
    acts: Vec<T>,
    /// Cell states `(T, rows, H)` (LSTM only).
    cells: Vec<T>,
    /// Hidden states `(T, rows, H)`.
    hidden: Vec<T>,
}

enum SavedAny {
    F32(Vec<Saved<f32>>),
    F64(Vec<Saved<f64>>),
}

/// The recurrence over precomputed input projections; see the module header.
pub struct RecurrenceOp {
    kind: CellKind,
    /// Keep activations for backward (training); inference skips it.
    keep: bool,
    threads: usize,
    saved: Mutex<Option<SavedAny>>,
}

impl RecurrenceOp {
    fn new(kind: CellKind, keep: bool) -> Self {
        RecurrenceOp { kind, keep, threads: candle_core::utils::get_num_threads().max(1), saved: Mutex::new(None) }
    }
}

/// `dst (m x n) = [dst +] lhs (m x k) * rhs (k x n)`, each given by its row and column strides.
#[allow(clippy::too_many_arguments)]
fn gemm<T: Copy + 'static>(
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

/// Forward of batch rows `start..start + rows`: returns what backward needs.
fn forward_chunk<T: Real>(kind: CellKind, d: Dims, xproj: &[T], w_hh: &[T], start: usize, rows: usize) -> Saved<T> {
    let (t_len, h, g) = (d.steps, d.hidden, d.width);
    let mut acts = vec![T::ZERO; t_len * rows * g];
    let mut hidden = vec![T::ZERO; t_len * rows * h];
    let mut cells = if kind == CellKind::Lstm { vec![T::ZERO; t_len * rows * h] } else { Vec::new() };
    // Time-major copy of this chunk's projections: step t's block is contiguous for the gemm.
    for t in 0..t_len {
        for b in 0..rows {
            let src = ((start + b) * t_len + t) * g;
            acts[(t * rows + b) * g..][..g].copy_from_slice(&xproj[src..src + g]);
        }
    }
    for t in 0..t_len {
        let (before, rest) = hidden.split_at_mut(t * rows * h);
        let a_t = &mut acts[t * rows * g..(t + 1) * rows * g];
        if t > 0 {
            let h_prev = &before[(t - 1) * rows * h..];
            // a_t += h_{t-1} (rows x H) * W_hh^T (H x G*H); W_hh is (G*H, H) row-major.
            gemm((rows, g, h), a_t, (g, 1), true, h_prev, (h, 1), w_hh, (1, h), T::ONE, T::ZERO);
        }
        let h_t = &mut rest[..rows * h];
        match kind {
            CellKind::Rnn => {
                for (a, out) in a_t.iter_mut().zip(h_t.iter_mut()) {
                    *a = a.tanh();
                    *out = *a;
                }
            }
            CellKind::Lstm => {
                let (cells_before, cells_rest) = cells.split_at_mut(t * rows * h);
                for b in 0..rows {
                    let gates = &mut a_t[b * g..(b + 1) * g];
                    for j in 0..h {
                        let i = gates[j].sigmoid();
                        let f = gates[h + j].sigmoid();
                        let gg = gates[2 * h + j].tanh();
                        let o = gates[3 * h + j].sigmoid();
                        gates[j] = i;
                        gates[h + j] = f;
                        gates[2 * h + j] = gg;
                        gates[3 * h + j] = o;
                        let c_prev = if t > 0 { cells_before[(t - 1) * rows * h + b * h + j] } else { T::ZERO };
                        let c = f.mul(c_prev) + i.mul(gg);
                        cells_rest[b * h + j] = c;
                        h_t[b * h + j] = o.mul(c.tanh());
                    }
                }
            }
        }
    }
    Saved { start, rows, acts, cells, hidden }
}

/// Backward of one chunk: writes its rows of d`xproj` (`dx`, this chunk's rows only, batch-major)
/// and returns its share of d`W_hh`.
fn backward_chunk<T: Real>(kind: CellKind, d: Dims, saved: &Saved<T>, grad: &[T], w_hh: &[T], dx: &mut [T]) -> Vec<T> {
    let (t_len, h, g, rows) = (d.steps, d.hidden, d.width, saved.rows);
    let mut da = vec![T::ZERO; t_len * rows * g];
    let mut dh_next = vec![T::ZERO; rows * h];
    let mut dc_next = vec![T::ZERO; if kind == CellKind::Lstm { rows * h } else { 0 }];
    for t in (0..t_len).rev() {
        let da_t = &mut da[t * rows * g..(t + 1) * rows * g];
        for b in 0..rows {
            let grad_row = &grad[((saved.start + b) * t_len + t) * h..][..h];
            match kind {
                CellKind::Rnn => {
                    for j in 0..h {
                        let dh = grad_row[j] + dh_next[b * h + j];
                        let hv = saved.hidden[(t * rows + b) * h + j];
                        da_t[b * g + j] = dh.mul(T::ONE - hv.mul(hv));
                    }
                }
                CellKind::Lstm => {
                    let gates = &saved.acts[(t * rows + b) * g..][..g];
                    for j in 0..h {
                        let dh = grad_row[j] + dh_next[b * h + j];
                        let (i, f, gg, o) = (gates[j], gates[h + j], gates[2 * h + j], gates[3 * h + j]);
                        let c = saved.cells[(t * rows + b) * h + j];
                        let c_prev = if t > 0 { saved.cells[((t - 1) * rows + b) * h + j] } else { T::ZERO };
                        let tc = c.tanh();
                        let d_o = dh.mul(tc);
                        let dc = dc_next[b * h + j] + dh.mul(o).mul(T::ONE - tc.mul(tc));
                        dc_next[b * h + j] = dc.mul(f);
                        let out = &mut da_t[b * g..(b + 1) * g];
                        out[j] = dc.mul(gg).mul(i).mul(T::ONE - i);
                        out[h + j] = dc.mul(c_prev).mul(f).mul(T::ONE - f);
                        out[2 * h + j] = dc.mul(i).mul(T::ONE - gg.mul(gg));
                        out[3 * h + j] = d_o.mul(o).mul(T::ONE - o);
                    }
                }
            }
        }
        if t > 0 {
            // dh_{t-1} = da_t (rows x G*H) * W_hh (G*H x H).
            gemm((rows, h, g), &mut dh_next, (h, 1), false, da_t, (g, 1), w_hh, (h, 1), T::ONE, T::ZERO);
        }
    }
    // dW_hh (G*H x H) = sum over t >= 1 of da_t^T * h_{t-1}: one gemm with k = (T-1) * rows.
    let mut dw = vec![T::ZERO; g * h];
    if t_len > 1 {
        let k = (t_len - 1) * rows;
        gemm((g, h, k), &mut dw, (h, 1), false, &da[rows * g..], (1, g), &saved.hidden, (h, 1), T::ONE, T::ZERO);
    }
    for b in 0..rows {
        for t in 0..t_len {
            dx[(b * t_len + t) * g..][..g].copy_from_slice(&da[(t * rows + b) * g..][..g]);
        }
    }
    dw
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

fn forward_all<T: Real>(kind: CellKind, d: Dims, xproj: &[T], w_hh: &[T], threads: usize) -> (Vec<T>, Vec<Saved<T>>) {
    let parts = chunks(d.batch, threads);
    let saved: Vec<Saved<T>> = if parts.len() == 1 {
        vec![forward_chunk(kind, d, xproj, w_hh, 0, d.batch)]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = parts
                .iter()
                .map(|&(start, rows)| scope.spawn(move || forward_chunk(kind, d, xproj, w_hh, start, rows)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
        })
    };
    // Output (B, T, H), batch-major.
    let mut out = vec![T::ZERO; d.batch * d.steps * d.hidden];
    for s in &saved {
        for b in 0..s.rows {
            for t in 0..d.steps {
                out[((s.start + b) * d.steps + t) * d.hidden..][..d.hidden]
                    .copy_from_slice(&s.hidden[(t * s.rows + b) * d.hidden..][..d.hidden]);
            }
        }
    }
    (out, saved)
}

fn backward_all<T: Real>(kind: CellKind, d: Dims, saved: &[Saved<T>], grad: &[T], w_hh: &[T]) -> (Vec<T>, Vec<T>) {
    let mut dx = vec![T::ZERO; d.batch * d.steps * d.width];
    let mut slices = Vec::with_capacity(saved.len());
    let mut rest = dx.as_mut_slice();
    for s in saved {
        let (mine, tail) = rest.split_at_mut(s.rows * d.steps * d.width);
        slices.push(mine);
        rest = tail;
    }
    let partials: Vec<Vec<T>> = if saved.len() == 1 {
        vec![backward_chunk(kind, d, &saved[0], grad, w_hh, slices.remove(0))]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = saved
                .iter()
                .zip(slices)
                .map(|(s, dx)| scope.spawn(move || backward_chunk(kind, d, s, grad, w_hh, dx)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
        })
    };
    // Sum the chunks' dW_hh in chunk order: the same order for the same thread count.
    let mut dw = partials[0].clone();
    for p in &partials[1..] {
        for (a, b) in dw.iter_mut().zip(p) {
            *a = *a + *b;
        }
    }
    (dx, dw)
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("recurrence: {what} must be contiguous"),
    }
}

impl RecurrenceOp {
    fn dims(&self, xproj: &Layout, w_hh: &Layout) -> candle_core::Result<Dims> {
        let (batch, steps, width) = match xproj.dims() {
            &[b, t, w] => (b, t, w),
            other => candle_core::bail!("recurrence: xproj must be (batch, steps, gates*hidden), got {other:?}"),
        };
        let hidden = match w_hh.dims() {
            &[w, h] if w == width && w == self.kind.gates() * h => h,
            other => candle_core::bail!(
                "recurrence: W_hh must be ({width}, {}), got {other:?}",
                width / self.kind.gates().max(1)
            ),
        };
        Ok(Dims { batch, steps, hidden, width })
    }
}

impl CustomOp2 for RecurrenceOp {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.dims(l1, l2)?;
        let shape = Shape::from((d.batch, d.steps, d.hidden));
        let (storage, saved) = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => {
                let (out, saved) =
                    forward_all(self.kind, d, contiguous(x, l1, "xproj")?, contiguous(w, l2, "W_hh")?, self.threads);
                (CpuStorage::F32(out), SavedAny::F32(saved))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w)) => {
                let (out, saved) =
                    forward_all(self.kind, d, contiguous(x, l1, "xproj")?, contiguous(w, l2, "W_hh")?, self.threads);
                (CpuStorage::F64(out), SavedAny::F64(saved))
            }
            _ => candle_core::bail!("recurrence: xproj and W_hh must both be f32 or both f64"),
        };
        if self.keep {
            *self.saved.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved);
        }
        Ok((storage, shape))
    }

    fn bwd(
        &self,
        xproj: &Tensor,
        w_hh: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = self.dims(xproj.layout(), w_hh.layout())?;
        let saved = self.saved.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(saved) = saved else {
            candle_core::bail!("recurrence: backward ran twice or without a training forward");
        };
        let device = xproj.device();
        let (gx, gw) = (d.batch * d.steps * d.width, d.width * d.hidden);
        let (dx, dw) = match saved {
            SavedAny::F32(saved) => {
                let grad = grad_res.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let w = w_hh.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let (dx, dw) = backward_all(self.kind, d, &saved, &grad, &w);
                (Tensor::from_vec(dx, gx, device)?, Tensor::from_vec(dw, gw, device)?)
            }
            SavedAny::F64(saved) => {
                let grad = grad_res.contiguous()?.flatten_all()?.to_vec1::<f64>()?;
                let w = w_hh.contiguous()?.flatten_all()?.to_vec1::<f64>()?;
                let (dx, dw) = backward_all(self.kind, d, &saved, &grad, &w);
                (Tensor::from_vec(dx, gx, device)?, Tensor::from_vec(dw, gw, device)?)
            }
        };
        Ok((Some(dx.reshape((d.batch, d.steps, d.width))?), Some(dw.reshape((d.width, d.hidden))?)))
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

    /// Input projections of all timesteps in one matmul: `(B, T, E)` -> `(B, T, G*H)`.
    pub fn project(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, e) = x.dims3()?;
        let flat = x.reshape((b * t, e))?;
        flat.matmul(&self.w_ih.t()?)?.broadcast_add(&self.bias)?.reshape((b, t, self.w_ih.dims()[0]))
    }

    /// All hidden states `(B, T, H)` for inputs `(B, T, E)`; `train` keeps what backward needs.
    pub fn sequence(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let xproj = self.project(x)?;
        self.recur(&xproj, train)
    }

    /// All hidden states from already projected inputs `(B, T, G*H)`.
    pub fn recur(&self, xproj: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if !matches!(xproj.device(), Device::Cpu) || !matches!(xproj.dtype(), DType::F32 | DType::F64) {
            return self.recur_reference(xproj);
        }
        let op = RecurrenceOp::new(self.kind, train);
        xproj.contiguous()?.apply_op2(&self.w_hh.contiguous()?, op)
    }

    /// The last hidden state `(B, H)` for inputs `(B, T, E)`.
    pub fn last(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let all = self.sequence(x, train)?;
        let steps = all.dim(1)?;
        all.narrow(1, steps - 1, 1)?.squeeze(1)
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
            let a = xproj.narrow(1, t, 1)?.squeeze(1)?.add(&h.matmul(&w_t)?)?;
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
            let xproj = Tensor::randn(0f32, 1.0, (b, t, g), &dev).unwrap();
            let w = Tensor::randn(0f32, 0.3, (g, h), &dev).unwrap();
            let grad = Tensor::randn(0f32, 1.0, (b, t, h), &dev).unwrap();
            let d = Dims { batch: b, steps: t, hidden: h, width: g };
            let x = xproj.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let wv = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let gv = grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (out1, s1) = forward_all(kind, d, &x, &wv, 1);
            let (out3, s3) = forward_all(kind, d, &x, &wv, 3);
            assert_eq!(out1, out3);
            let (dx1, _) = backward_all(kind, d, &s1, &gv, &wv);
            let (dx3, dw3) = backward_all(kind, d, &s3, &gv, &wv);
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
                candle_core::Var::from_tensor(&Tensor::randn(0f32, 0.1, (g, e), &dev).unwrap()).unwrap().as_tensor().clone(),
                candle_core::Var::from_tensor(&Tensor::randn(0f32, 0.1, (g, h), &dev).unwrap()).unwrap().as_tensor().clone(),
                Tensor::zeros(g, DType::F32, &dev).unwrap(),
            )
            .unwrap();
            for _ in 0..3 {
                let s = Instant::now();
                let xp = layer.project(x.as_tensor()).unwrap();
                let t1 = s.elapsed();
                let out = layer.recur(&xp, true).unwrap();
                let t2 = s.elapsed();
                let last = out.narrow(1, t - 1, 1).unwrap().sum_all().unwrap();
                let t3 = s.elapsed();
                let _grads = last.backward().unwrap();
                let t4 = s.elapsed();
                println!("{kind:?}: project {t1:?} recur {:?} narrow+sum {:?} backward {:?}", t2 - t1, t3 - t2, t4 - t3);
            }
        }
    }
}
