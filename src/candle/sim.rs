//! The kernels backend: the crate's CUDA kernels, run by the simulator on
//! views of candle's CPU memory ([`crate::gpu::fused`]; on the simulator a
//! device address is a host address). `x`, `y`, `W`, `dy` and `dx` are
//! candle's storage, seen through [`TensorRef::host`] and friends without a
//! copy; the saved state (keep bits, `v`, `g`, mask, CE, gate statistics) and
//! the counters are host vectors of the layer's.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Tensor, WithDType};
use half::{bf16, f16};

use crate::config::{check_targets, AiecConfig, InputDims};
use crate::counters::Counters;
use crate::device::Device;
use crate::dtype::Element;
use crate::error::Result;
use crate::gpu::fused::{
    self, AuxMut, CountersMut, DwMode, Dx, SavedRef, Scales, TargetCheck, TrainBackward, TrainIn, TrainOut,
    Update,
};
use crate::layout::Sizes;
use crate::params::{AiecGateStats, AiecLosses};
use crate::view::{SliceMut, SliceRef, TensorMut, TensorRef};

use super::error::{dtype_error, host_slice, IntoCandle};
use super::Backend;

/// What a forward on the kernels keeps.
pub(crate) struct KernelRecord {
    device: Device,
    dims: InputDims,
    dtype: crate::DType,
    /// The keep bits.
    keep: Vec<u32>,
    aux: Option<KernelAux>,
}

/// The saved state of a forward with targets.
struct KernelAux {
    /// The forward's `W`, `[K, C]`.
    w: Vec<f32>,
    /// `[B, C]`.
    v: Vec<f32>,
    /// `[B, K]`: `softmax - onehot`.
    g: Vec<f32>,
    /// `[B, C]`.
    mask: Vec<u8>,
    /// `[B]`.
    ce: Vec<f32>,
    stats: AiecGateStats,
}

impl KernelRecord {
    pub(crate) fn gate_count(&self) -> Option<u64> {
        self.aux.as_ref().map(|a| a.stats.count)
    }

    /// `[sum_b CE_b, S]`.
    pub(crate) fn terms(&self) -> Option<Vec<f32>> {
        self.aux.as_ref().map(|a| vec![a.ce.iter().map(|&v| v as f64).sum::<f64>() as f32, a.stats.sum_sq])
    }
}

/// The layer's host state a forward reads and updates: `W` `[K, C]`, the
/// counters, and whether this step updates them.
pub(crate) struct HostLayer<'a> {
    pub(crate) w: &'a [f32],
    pub(crate) counters: &'a mut Counters,
    pub(crate) update: bool,
}

/// Runs the forward on `dev` over `x` (candle's storage) and the layer's
/// state; returns `y` as candle storage.
pub(crate) fn forward(
    dev: &Device,
    cfg: &AiecConfig,
    x: &CpuStorage,
    l: &Layout,
    layer: HostLayer,
    targets: Option<&[i64]>,
) -> candle_core::Result<(CpuStorage, KernelRecord)> {
    fn run<T: Element + WithDType>(
        dev: &Device,
        cfg: &AiecConfig,
        x: &[T],
        dims: &[usize],
        layer: HostLayer,
        targets: Option<&[i64]>,
    ) -> Result<(CpuStorage, KernelRecord)> {
        let HostLayer { w, counters, update } = layer;
        let plan = cfg.plan_input(dims)?;
        let sizes = Sizes::of(&plan, cfg.classes());
        if let Some(t) = targets {
            check_targets(t, plan.batch, cfg.classes())?;
        }
        counters.check(cfg.classes(), cfg.channels())?;
        let mut y = vec![T::zero(); x.len()];
        let mut keep = vec![0u32; sizes.keep];
        let xv = TensorRef::host(dev, x, dims)?;
        let mut yv = TensorMut::host(dev, &mut y, dims)?;
        let Some(targets) = targets else {
            fused::fwd_x(cfg, &xv, &mut yv, &mut SliceMut::host(dev, &mut keep)?, None)?;
            drop(yv);
            let rec = KernelRecord {
                device: dev.clone(),
                dims: plan,
                dtype: <T as Element>::DTYPE,
                keep,
                aux: None,
            };
            return Ok((T::to_cpu_storage_owned(y), rec));
        };
        let mut aux = KernelAux {
            w: w.to_vec(),
            v: vec![0.0; sizes.bc],
            g: vec![0.0; sizes.bk],
            mask: vec![0; sizes.bc],
            ce: vec![0.0; sizes.batch],
            stats: bytemuck::Zeroable::zeroed(),
        };
        let mut logits = vec![0f32; sizes.bk];
        let mut scratch = vec![0u8; sizes.scratch_bytes];
        let mut stats = [aux.stats];
        {
            let mut views = AuxMut {
                v: SliceMut::host(dev, &mut aux.v)?,
                logits: SliceMut::host(dev, &mut logits)?,
                ce: SliceMut::host(dev, &mut aux.ce)?,
                g: SliceMut::host(dev, &mut aux.g)?,
                mask: SliceMut::host(dev, &mut aux.mask)?,
                stats: SliceMut::host(dev, &mut stats)?,
                scratch: SliceMut::host(dev, &mut scratch)?,
            };
            let mut cv = CountersMut {
                act: SliceMut::host(dev, &mut counters.act)?,
                inh: SliceMut::host(dev, &mut counters.inh)?,
                total: SliceMut::host(dev, &mut counters.total)?,
            };
            fused::forward_train(
                cfg,
                TrainIn {
                    x: &xv,
                    w: &SliceRef::host(dev, w)?,
                    targets: &SliceRef::host(dev, targets)?,
                    check: TargetCheck::Host,
                },
                &mut cv,
                Update::Now(update),
                TrainOut { y: &mut yv, keep: &mut SliceMut::host(dev, &mut keep)?, aux: &mut views },
            )?;
        }
        dev.synchronize()?;
        drop(yv);
        aux.stats = stats[0];
        let rec = KernelRecord {
            device: dev.clone(),
            dims: plan,
            dtype: <T as Element>::DTYPE,
            keep,
            aux: Some(aux),
        };
        Ok((T::to_cpu_storage_owned(y), rec))
    }
    let dims = l.dims();
    let backend = || Backend::Kernels(dev.clone());
    match x {
        CpuStorage::F32(_) => run(dev, cfg, host_slice::<f32>(x, l, "x")?, dims, layer, targets),
        CpuStorage::F16(_) => run(dev, cfg, host_slice::<f16>(x, l, "x")?, dims, layer, targets),
        CpuStorage::BF16(_) => run(dev, cfg, host_slice::<bf16>(x, l, "x")?, dims, layer, targets),
        other => return Err(dtype_error(&backend(), other.dtype())),
    }
    .candle()
}

/// `dx = keep ? dy : 0` by `aiec_bwd_x` (`fused::backward` without a training part).
pub(crate) fn bwd_x(
    cfg: &AiecConfig,
    rec: &KernelRecord,
    dy: &CpuStorage,
    l: &Layout,
) -> candle_core::Result<CpuStorage> {
    fn run<T: Element + WithDType>(cfg: &AiecConfig, rec: &KernelRecord, dy: &[T]) -> Result<CpuStorage> {
        let dev = &rec.device;
        let dims = &rec.dims.dims;
        let mut dx = vec![T::zero(); dy.len()];
        {
            let target = Dx::Into {
                dy: &TensorRef::host(dev, dy, dims)?,
                dx: &mut TensorMut::host(dev, &mut dx, dims)?,
            };
            fused::backward(cfg, &rec.dims, &SliceRef::host(dev, &rec.keep)?, None, target)?;
        }
        dev.synchronize()?;
        Ok(T::to_cpu_storage_owned(dx))
    }
    match rec.dtype {
        crate::DType::F32 => run(cfg, rec, host_slice::<f32>(dy, l, "dy")?),
        crate::DType::F16 => run(cfg, rec, host_slice::<f16>(dy, l, "dy")?),
        crate::DType::BF16 => run(cfg, rec, host_slice::<bf16>(dy, l, "dy")?),
    }
    .candle()
}

/// `dx` (a tensor of `x`'s dtype and shape `dims`) and `dW` of the terms by the
/// kernels (`fused::backward` with `dy = 0`), with `aux_scale = d_ce`
/// and `gate_scale = 2 dS`.
pub(crate) fn backward_terms(
    cfg: &AiecConfig,
    rec: &KernelRecord,
    d_ce: f64,
    d_s: f64,
    dims: &[usize],
    candle_dev: &candle_core::Device,
) -> candle_core::Result<(Tensor, Vec<f32>)> {
    fn run<T: Element + WithDType>(
        cfg: &AiecConfig,
        rec: &KernelRecord,
        d_ce: f64,
        d_s: f64,
        dims: &[usize],
        candle_dev: &candle_core::Device,
    ) -> candle_core::Result<(Tensor, Vec<f32>)> {
        let dev = &rec.device;
        let Some(aux) = &rec.aux else {
            return Err(super::error::unsupported("the aiec terms of a forward without targets".into()));
        };
        let n: usize = dims.iter().product();
        let zeros = vec![T::zero(); n];
        let mut dx = vec![T::zero(); n];
        let mut dv = vec![0f32; fused::dv_scratch_len(cfg, &rec.dims, dev)];
        let mut dw = vec![0f32; cfg.classes() * cfg.channels()];
        // Only aux_scale and gate_scale are read by the backward kernel.
        let losses = [AiecLosses {
            aux_scale: d_ce as f32,
            gate_scale: (2.0 * d_s) as f32,
            ..bytemuck::Zeroable::zeroed()
        }];
        let r: Result<()> = (|| {
            let saved = SavedRef {
                v: SliceRef::host(dev, &aux.v)?,
                g: SliceRef::host(dev, &aux.g)?,
                mask: SliceRef::host(dev, &aux.mask)?,
            };
            let train = TrainBackward {
                w: &SliceRef::host(dev, &aux.w)?,
                saved: &saved,
                scales: &Scales { losses: SliceRef::host(dev, &losses)?, row_scale: None },
                dv: &mut SliceMut::host(dev, &mut dv)?,
                dw: &mut SliceMut::host(dev, &mut dw)?,
                mode: DwMode::Write,
            };
            let target = Dx::Into {
                dy: &TensorRef::host(dev, &zeros, dims)?,
                dx: &mut TensorMut::host(dev, &mut dx, dims)?,
            };
            fused::backward(cfg, &rec.dims, &SliceRef::host(dev, &rec.keep)?, Some(train), target)?;
            dev.synchronize()
        })();
        r.candle()?;
        Ok((Tensor::from_vec(dx, dims, candle_dev)?, dw))
    }
    match rec.dtype {
        crate::DType::F32 => run::<f32>(cfg, rec, d_ce, d_s, dims, candle_dev),
        crate::DType::F16 => run::<f16>(cfg, rec, d_ce, d_s, dims, candle_dev),
        crate::DType::BF16 => run::<bf16>(cfg, rec, d_ce, d_s, dims, candle_dev),
    }
}
