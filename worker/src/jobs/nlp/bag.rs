//! A multi-hot dense layer as a sum of weight rows (PyTorch's `EmbeddingBag(mode="sum")`).
//!
//! `multi_hot(ids) W` for a `(max_features, units)` kernel `W` is the sum of `W`'s rows at the ids
//! a review contains. [`BagSum`] computes exactly that from each review's distinct ids `(B, L)`
//! (padded with 0, which is never a word id and is skipped), and its backward adds each review's
//! output gradient into the rows it read. A train step then touches `B * L * units` numbers instead
//! of two `B x max_features x units` matmuls, and skips candle's generic gather/scatter graph.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Storage, Tensor};

use crate::jobs::gemm::contiguous;

/// `out[b] = sum over l with ids[b, l] != 0 of kernel[ids[b, l]]`.
pub struct BagSum;

fn dims(kernel: &Layout, ids: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
    match (kernel.dims(), ids.dims()) {
        (&[v, u], &[b, l]) => Ok((v, u, b, l)),
        (k, i) => {
            candle_core::bail!("bag sum: kernel must be (features, units) and ids (batch, len), got {k:?}, {i:?}")
        }
    }
}

impl CustomOp2 for BagSum {
    fn name(&self) -> &'static str {
        "bag-sum"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (v, u, b, l) = dims(l1, l2)?;
        let (CpuStorage::F32(kernel), CpuStorage::U32(ids)) = (s1, s2) else {
            candle_core::bail!("bag sum: kernel must be f32 and ids u32");
        };
        let (kernel, ids) = (contiguous(kernel, l1, "kernel")?, contiguous(ids, l2, "ids")?);
        let mut out = vec![0f32; b * u];
        for (row, out) in ids.chunks_exact(l.max(1)).zip(out.chunks_exact_mut(u)) {
            for &id in row {
                if id == 0 {
                    continue;
                }
                let id = id as usize;
                if id >= v {
                    candle_core::bail!("bag sum: id {id} is outside the {v} features");
                }
                out.iter_mut().zip(&kernel[id * u..(id + 1) * u]).for_each(|(o, k)| *o += k);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, u))))
    }

    fn bwd(
        &self,
        kernel: &Tensor,
        ids: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (v, u, _, l) = dims(kernel.layout(), ids.layout())?;
        let (ids, grad) = (ids.contiguous()?, grad.contiguous()?);
        let (id_storage, id_layout) = ids.storage_and_layout();
        let (grad_storage, grad_layout) = grad.storage_and_layout();
        let (Storage::Cpu(CpuStorage::U32(id_data)), Storage::Cpu(CpuStorage::F32(grad_data))) =
            (&*id_storage, &*grad_storage)
        else {
            candle_core::bail!("bag sum: backward needs CPU u32 ids and f32 gradients");
        };
        let (id_data, grad_data) =
            (contiguous(id_data, id_layout, "ids")?, contiguous(grad_data, grad_layout, "grad")?);
        let mut d_kernel = vec![0f32; v * u];
        for (row, g) in id_data.chunks_exact(l.max(1)).zip(grad_data.chunks_exact(u)) {
            for &id in row {
                if id != 0 && (id as usize) < v {
                    let at = id as usize * u;
                    d_kernel[at..at + u].iter_mut().zip(g).for_each(|(d, g)| *d += g);
                }
            }
        }
        Ok((Some(Tensor::from_vec(d_kernel, (v, u), kernel.device())?), None))
    }
}

/// `(B, units)` sums of `kernel`'s rows at each row of `ids` (0 skipped).
pub fn bag_sum(kernel: &Tensor, ids: &Tensor) -> candle_core::Result<Tensor> {
    if !kernel.device().is_cpu() {
        // The same sum through candle's gather: rows at every id, id 0's masked out.
        let (b, l) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        let rows = kernel.index_select(&flat, 0)?;
        let present = flat.ne(0u32)?.to_dtype(kernel.dtype())?.reshape((b * l, 1))?;
        return rows.broadcast_mul(&present)?.reshape((b, l, kernel.dim(1)?))?.sum(1);
    }
    kernel.apply_op2(&ids.contiguous()?, BagSum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Forward and gradient equal the dense multi-hot matmul's.
    #[test]
    fn equals_the_multi_hot_matmul() {
        let dev = Device::Cpu;
        let (v, u) = (7, 3);
        let kernel = Var::from_tensor(&Tensor::randn(0f32, 1.0, (v, u), &dev).unwrap()).unwrap();
        let ids = Tensor::new(&[[2u32, 5, 6], [1, 0, 0], [3, 4, 0]], &dev).unwrap();
        let mut hot = vec![0f32; 3 * v];
        for (b, row) in [[2usize, 5, 6], [1, 0, 0], [3, 4, 0]].iter().enumerate() {
            for &id in row.iter().filter(|&&i| i != 0) {
                hot[b * v + id] = 1.0;
            }
        }
        let hot = Tensor::from_vec(hot, (3, v), &dev).unwrap();
        let weights = Tensor::randn(0f32, 1.0, (3, u), &dev).unwrap();
        let dense = hot.matmul(kernel.as_tensor()).unwrap();
        let bag = bag_sum(kernel.as_tensor(), &ids).unwrap();
        let diff = |a: &Tensor, b: &Tensor| {
            a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        assert!(diff(&dense, &bag) < 1e-6);
        let g_dense = dense.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
        let g_bag = bag.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(diff(g_dense.get(kernel.as_tensor()).unwrap(), g_bag.get(kernel.as_tensor()).unwrap()) < 1e-6);
    }

    #[test]
    fn an_id_past_the_features_is_an_error() {
        let kernel = Tensor::zeros((4, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let ids = Tensor::new(&[[9u32]], &Device::Cpu).unwrap();
        let err = bag_sum(&kernel, &ids).unwrap_err().to_string();
        assert!(err.contains("id 9"), "{err}");
    }
}
