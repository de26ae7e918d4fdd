//! Conv2d and ConvTranspose2d (NCHW, square kernels, symmetric padding) on CPU through im2col and
//! gemm, as candle custom ops with their own backward.
//!
//! candle's CPU ConvTranspose2d forward is a direct loop without gemm, and the backward passes of
//! both layers are several times slower than PyTorch's (../shared/CANDLE-NOTES.md). Both layers here
//! are one geometry seen from two sides: a "big" image `(C, H, W)` and the "small" grid of kernel
//! positions `(h, w)` with `y = oy * stride - pad + ky`:
//!
//! - `im2col(big) -> cols (C*k*k, h*w)` gathers, for every kernel position, the pixels it covers;
//! - `col2im(cols) -> big` scatter-adds them back (its adjoint).
//!
//! Conv2d (`x` big, output small): `out_b = W (Cout, Cin*k*k) * im2col(x_b)`; backward
//! `dW += dout_b * im2col(x_b)^T` and `dx_b = col2im(W^T * dout_b)`.
//!
//! ConvTranspose2d (`x` small, output big; PyTorch's weight `(Cin, Cout, k, k)`): it is Conv2d's
//! backward-data, `out_b = col2im(W^T (Cout*k*k, Cin) * x_b)`; backward
//! `dx_b = W * im2col(dout_b)` and `dW += x_b * im2col(dout_b)^T`. `output_padding` only makes the
//! big side larger: `H = (h - 1) * stride - 2 * pad + k + output_padding`.
//!
//! Samples are split over threads in contiguous chunks (each sample's arithmetic is the same in any
//! chunk); weight gradients are summed over chunks in chunk order. Bias is left to candle
//! (`broadcast_add`), whose gradient is a plain sum. f32 and f64 (the tests' precision) on CPU;
//! other devices run candle's own `conv2d` / `conv_transpose2d`.

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
    channels: usize,
    big_h: usize,
    big_w: usize,
    small_h: usize,
    small_w: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

impl Geometry {
    fn rows(&self) -> usize {
        self.channels * self.k * self.k
    }

    fn cols(&self) -> usize {
        self.small_h * self.small_w
    }

    fn big(&self) -> usize {
        self.channels * self.big_h * self.big_w
    }

    /// `cols[(c, ky, kx), off + (oy, ox)] = big[c, oy*s - p + ky, ox*s - p + kx]`, 0 outside;
    /// `cols` rows are `ld` apart, so several samples can sit side by side.
    fn im2col<T: Float>(&self, big: &[T], cols: &mut [T], ld: usize, off: usize) {
        let (k, s, p, n) = (self.k, self.stride, self.pad as isize, self.cols());
        for c in 0..self.channels {
            let plane = &big[c * self.big_h * self.big_w..][..self.big_h * self.big_w];
            for ky in 0..k {
                for kx in 0..k {
                    let row = &mut cols[((c * k + ky) * k + kx) * ld + off..][..n];
                    for oy in 0..self.small_h {
                        let y = (oy * s + ky) as isize - p;
                        let out = &mut row[oy * self.small_w..(oy + 1) * self.small_w];
                        if y < 0 || y >= self.big_h as isize {
                            out.fill(T::ZERO);
                            continue;
                        }
                        let line = &plane[y as usize * self.big_w..][..self.big_w];
                        for (ox, o) in out.iter_mut().enumerate() {
                            let x = (ox * s + kx) as isize - p;
                            *o = if x >= 0 && x < self.big_w as isize { line[x as usize] } else { T::ZERO };
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of [`Geometry::im2col`]: `big` (zeroed here) gets every column entry added back.
    fn col2im<T: Float>(&self, cols: &[T], ld: usize, off: usize, big: &mut [T]) {
        big.fill(T::ZERO);
        let (k, s, p, n) = (self.k, self.stride, self.pad as isize, self.cols());
        for c in 0..self.channels {
            let plane = &mut big[c * self.big_h * self.big_w..][..self.big_h * self.big_w];
            for ky in 0..k {
                for kx in 0..k {
                    let row = &cols[((c * k + ky) * k + kx) * ld + off..][..n];
                    for oy in 0..self.small_h {
                        let y = (oy * s + ky) as isize - p;
                        if y < 0 || y >= self.big_h as isize {
                            continue;
                        }
                        let line = &mut plane[y as usize * self.big_w..][..self.big_w];
                        for (ox, v) in row[oy * self.small_w..(oy + 1) * self.small_w].iter().enumerate() {
                            let x = (ox * s + kx) as isize - p;
                            if x >= 0 && x < self.big_w as isize {
                                line[x as usize] = line[x as usize] + *v;
                            }
                        }
                    }
                }
            }
        }
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

/// Contiguous runs of samples, one per thread.
fn chunks(batch: usize, threads: usize) -> Vec<std::ops::Range<usize>> {
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

/// Runs `work(samples, out_chunk)` over the batch in parallel; `out` holds `per` values a sample.
fn per_sample<T: Float, R: Send>(
    batch: usize,
    per: usize,
    out: &mut [T],
    work: impl Fn(std::ops::Range<usize>, &mut [T]) -> R + Sync,
) -> Vec<R> {
    let parts = chunks(batch, threads());
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
    c_in: usize,
    c_out: usize,
    /// For Conv: channels = c_in, big = input. For Transpose: channels = c_out, big = output.
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
                    channels: c_in,
                    big_h: h,
                    big_w: wd,
                    small_h: (h + 2 * pad - k) / stride + 1,
                    small_w: (wd + 2 * pad - k) / stride + 1,
                    k,
                    stride,
                    pad,
                };
                Ok(Call { batch, c_in, c_out: w0, geo, kind })
            }
            ConvKind::Transpose { stride, pad, output_pad } => {
                if w0 != c_in {
                    candle_core::bail!("conv transpose: weight {w:?} does not take {c_in} input channels");
                }
                let side = |n: usize| ((n.max(1) - 1) * stride + k + output_pad).checked_sub(2 * pad);
                let (Some(big_h), Some(big_w)) = (side(h), side(wd)) else {
                    candle_core::bail!("conv transpose: padding {pad} too large for a {k}x{k} kernel");
                };
                let geo = Geometry { channels: w1, big_h, big_w, small_h: h, small_w: wd, k, stride, pad };
                Ok(Call { batch, c_in, c_out: w1, geo, kind })
            }
        }
    }

    fn out_shape(&self) -> Shape {
        match self.kind {
            ConvKind::Conv { .. } => Shape::from((self.batch, self.c_out, self.geo.small_h, self.geo.small_w)),
            ConvKind::Transpose { .. } => Shape::from((self.batch, self.c_out, self.geo.big_h, self.geo.big_w)),
        }
    }

    fn in_per_sample(&self) -> usize {
        match self.kind {
            ConvKind::Conv { .. } => self.geo.big(),
            ConvKind::Transpose { .. } => self.c_in * self.geo.cols(),
        }
    }

    fn out_per_sample(&self) -> usize {
        match self.kind {
            ConvKind::Conv { .. } => self.c_out * self.geo.cols(),
            ConvKind::Transpose { .. } => self.geo.big(),
        }
    }

    /// Samples per gemm: enough columns for an efficient gemm, a bounded `cols` buffer.
    fn block(&self) -> usize {
        const COLS_BUDGET: usize = 4 << 20;
        (COLS_BUDGET / (self.geo.rows() * self.geo.cols()).max(1)).clamp(1, 64)
    }

    /// Runs `work(first_sample, samples, out_chunk)` over blocks of the batch, blocks split over
    /// threads; `out` holds `per` values a sample.
    fn blocks<T: Float, R: Send>(
        &self,
        per: usize,
        out: &mut [T],
        work: impl Fn(usize, usize, &mut [T], &mut Vec<T>, &mut Vec<T>) + Sync,
        finish: impl Fn(Vec<T>) -> R + Sync,
    ) -> Vec<R> {
        let block = self.block();
        per_sample(self.batch, per, out, |samples, out| {
            let (mut cols, mut wide) = (Vec::new(), Vec::new());
            let start = samples.start;
            let mut acc = Vec::new();
            let mut first = samples.start;
            while first < samples.end {
                let count = block.min(samples.end - first);
                let local = (first - start) * per;
                work(first, count, &mut out[local..local + count * per], &mut cols, &mut wide);
                first += count;
                if acc.is_empty() {
                    acc = std::mem::take(&mut wide);
                } else {
                    acc.iter_mut().zip(&wide).for_each(|(a, b)| *a = *a + *b);
                }
            }
            finish(acc)
        })
    }

    fn forward<T: Float>(&self, x: &[T], w: &[T]) -> Vec<T> {
        let g = self.geo;
        let (rows, n) = (g.rows(), g.cols());
        let (ins, outs) = (self.in_per_sample(), self.out_per_sample());
        let mut out = vec![T::ZERO; self.batch * outs];
        self.blocks(
            outs,
            &mut out,
            |first, count, out, cols, wide| {
                let ld = count * n;
                cols.resize(rows * ld, T::ZERO);
                match self.kind {
                    ConvKind::Conv { .. } => {
                        for i in 0..count {
                            g.im2col(&x[(first + i) * ins..][..ins], cols, ld, i * n);
                        }
                        // tmp (Cout x count*n) = W (Cout x rows) * cols; then per sample (Cout, n).
                        wide.resize(self.c_out * ld, T::ZERO);
                        gemm((self.c_out, ld, rows), wide, (ld, 1), false, w, (rows, 1), cols, (ld, 1));
                        for i in 0..count {
                            for c in 0..self.c_out {
                                out[(i * self.c_out + c) * n..][..n].copy_from_slice(&wide[c * ld + i * n..][..n]);
                            }
                        }
                    }
                    ConvKind::Transpose { .. } => {
                        // xw (Cin x count*n) side by side; cols (rows x count*n) = W^T (rows x Cin) * xw.
                        wide.resize(self.c_in * ld, T::ZERO);
                        for i in 0..count {
                            for c in 0..self.c_in {
                                wide[c * ld + i * n..][..n]
                                    .copy_from_slice(&x[((first + i) * self.c_in + c) * n..][..n]);
                            }
                        }
                        gemm((rows, ld, self.c_in), cols, (ld, 1), false, w, (1, rows), wide, (ld, 1));
                        for i in 0..count {
                            g.col2im(cols, ld, i * n, &mut out[i * outs..(i + 1) * outs]);
                        }
                    }
                }
                wide.clear();
            },
            |_| (),
        );
        out
    }

    /// `dx` and `dW` from the output gradient.
    fn backward<T: Float>(&self, x: &[T], w: &[T], grad: &[T]) -> (Vec<T>, Vec<T>) {
        let g = self.geo;
        let (rows, n) = (g.rows(), g.cols());
        let (ins, outs) = (self.in_per_sample(), self.out_per_sample());
        let weights = w.len();
        let mut dx = vec![T::ZERO; self.batch * ins];
        let partials = self.blocks(
            ins,
            &mut dx,
            |first, count, dx, cols, dw| {
                let ld = count * n;
                cols.resize(rows * ld, T::ZERO);
                dw.clear();
                dw.resize(weights, T::ZERO);
                match self.kind {
                    ConvKind::Conv { .. } => {
                        for i in 0..count {
                            g.im2col(&x[(first + i) * ins..][..ins], cols, ld, i * n);
                        }
                        // gw (Cout x count*n): the output gradient side by side.
                        let mut gw = vec![T::ZERO; self.c_out * ld];
                        for i in 0..count {
                            for c in 0..self.c_out {
                                gw[c * ld + i * n..][..n]
                                    .copy_from_slice(&grad[((first + i) * self.c_out + c) * n..][..n]);
                            }
                        }
                        // dW (Cout x rows) = gw * cols^T
                        gemm((self.c_out, rows, ld), dw, (rows, 1), false, &gw, (ld, 1), cols, (1, ld));
                        // dcols (rows x count*n) = W^T (rows x Cout) * gw; dx = col2im(dcols)
                        gemm((rows, ld, self.c_out), cols, (ld, 1), false, w, (1, rows), &gw, (ld, 1));
                        for i in 0..count {
                            g.col2im(cols, ld, i * n, &mut dx[i * ins..(i + 1) * ins]);
                        }
                    }
                    ConvKind::Transpose { .. } => {
                        for i in 0..count {
                            g.im2col(&grad[(first + i) * outs..][..outs], cols, ld, i * n);
                        }
                        // tmp (Cin x count*n) = W (Cin x rows) * cols; then per sample (Cin, n).
                        let mut tmp = vec![T::ZERO; self.c_in * ld];
                        gemm((self.c_in, ld, rows), &mut tmp, (ld, 1), false, w, (rows, 1), cols, (ld, 1));
                        let mut xw = vec![T::ZERO; self.c_in * ld];
                        for i in 0..count {
                            for c in 0..self.c_in {
                                dx[(i * self.c_in + c) * n..][..n].copy_from_slice(&tmp[c * ld + i * n..][..n]);
                                xw[c * ld + i * n..][..n].copy_from_slice(&x[((first + i) * self.c_in + c) * n..][..n]);
                            }
                        }
                        // dW (Cin x rows) = xw (Cin x count*n) * cols^T
                        gemm((self.c_in, rows, ld), dw, (rows, 1), false, &xw, (ld, 1), cols, (1, ld));
                    }
                }
            },
            |dw| dw,
        );
        (dx, sum_in_order(partials))
    }
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
                (Tensor::new(dx, device)?, Tensor::new(dw, device)?)
            }
            (
                Storage::Cpu(CpuStorage::F64(xv)),
                Storage::Cpu(CpuStorage::F64(wv)),
                Storage::Cpu(CpuStorage::F64(gv)),
            ) => {
                let (dx, dw) =
                    call.backward(contiguous(xv, xl, "x")?, contiguous(wv, wl, "weight")?, contiguous(gv, gl, "grad")?);
                (Tensor::new(dx, device)?, Tensor::new(dw, device)?)
            }
            _ => candle_core::bail!("conv: backward needs CPU tensors of one float type"),
        };
        Ok((Some(dx.reshape(x.dims())?), Some(dw.reshape(w.dims())?)))
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
    use candle_core::{Device, Var};
    use std::time::Instant;

    /// DCGAN layer timings at batch 256:
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
        for (name, xs, ws, kind) in cases {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, &xs, &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, &ws, &dev).unwrap()).unwrap();
            let mut fwd = Vec::new();
            let mut bwd = Vec::new();
            for _ in 0..3 {
                let s = Instant::now();
                let out = x
                    .as_tensor()
                    .contiguous()
                    .unwrap()
                    .apply_op2(&w.as_tensor().contiguous().unwrap(), ConvOp(kind))
                    .unwrap();
                fwd.push(s.elapsed().as_secs_f64() * 1e3);
                let s = Instant::now();
                let _ = out.sum_all().unwrap().backward().unwrap();
                bwd.push(s.elapsed().as_secs_f64() * 1e3);
            }
            fwd.sort_by(f64::total_cmp);
            bwd.sort_by(f64::total_cmp);
            println!("{name}: fwd {:.1} ms bwd {:.1} ms", fwd[1], bwd[1]);
        }
    }
}
