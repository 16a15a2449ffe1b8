//! A backend that runs a case through the op on views of caller memory
//! ([`aiec::gpu::fused`]): every buffer of the step (x, y, the keep bits, the
//! saved state, counters, W, targets, losses, dv, dx, dW) is a slice of a host
//! `Vec` placed `offset` elements past its start, on the simulator, where a
//! device address is a host address. With `offset = 1` nothing is 16-byte
//! aligned, so the kernels take their narrower paths.

use aiec::cpu::LossCoefs;
use aiec::gpu::fused::{
    self, AuxMut, CountersMut, DwMode, Dx, LayerLoss, SavedRef, Scales, TargetCheck, TrainBackward, TrainIn,
    TrainOut,
};
use aiec::layout::Sizes;
use aiec::params::{AiecGateStats, AiecLosses};
use aiec::{Device, Element, SliceMut, SliceRef, TensorMut, TensorRef};

use super::golden::GoldenCase;
use super::runner::{config, LayerOutputs, Outputs};

/// Host memory for one buffer: `offset` padding values, then the buffer.
pub struct Placed<T> {
    data: Vec<T>,
    offset: usize,
}

impl<T: Copy> Placed<T> {
    pub fn new(values: &[T], offset: usize, pad: T) -> Self {
        let mut data = vec![pad; offset];
        data.extend_from_slice(values);
        Placed { data, offset }
    }
    pub fn filled(len: usize, offset: usize, value: T) -> Self {
        Placed { data: vec![value; len + offset], offset }
    }
    pub fn get(&self) -> &[T] {
        &self.data[self.offset..]
    }
    pub fn get_mut(&mut self) -> &mut [T] {
        &mut self.data[self.offset..]
    }
    /// The padding is untouched (no kernel wrote outside its buffer).
    pub fn padding(&self) -> &[T] {
        &self.data[..self.offset]
    }
}

fn e(err: aiec::AiecError) -> String {
    err.to_string()
}

/// Runs `case` on the simulator `dev` through views, activations in `T`,
/// every buffer placed `offset` elements into its allocation.
pub fn run_views<T: Element>(dev: &Device, case: &GoldenCase, offset: usize) -> Result<Outputs, String> {
    let cfg = config(case);
    let (k, c) = (case.classes, case.channels);
    let n: usize = case.dims.iter().product();
    let dims = cfg.plan_input(&case.dims).map_err(e)?;
    let sizes = Sizes::of(&dims, k);
    let nan = T::from_f32(f32::NAN);
    let targets = Placed::new(&case.targets, offset, -7i64);
    struct Layer<T> {
        x: Placed<T>,
        y: Placed<T>,
        w: Placed<f32>,
        keep: Placed<u32>,
        v: Placed<f32>,
        logits: Placed<f32>,
        ce: Placed<f32>,
        g: Placed<f32>,
        mask: Placed<u8>,
        stats: Placed<AiecGateStats>,
        scratch: Placed<u64>,
        act: Placed<i64>,
        inh: Placed<i64>,
        total: Placed<i64>,
        dy: Placed<T>,
    }
    let mut layers: Vec<Layer<T>> = case
        .layers
        .iter()
        .map(|l| Layer {
            x: Placed::new(&l.x.iter().map(|&v| T::from_f32(v as f32)).collect::<Vec<_>>(), offset, nan),
            y: Placed::filled(n, offset, nan),
            w: Placed::new(&l.w.iter().map(|&v| v as f32).collect::<Vec<_>>(), offset, f32::NAN),
            keep: Placed::filled(sizes.keep, offset, 0xDEAD_BEEF),
            v: Placed::filled(sizes.bc, offset, f32::NAN),
            logits: Placed::filled(sizes.bk, offset, f32::NAN),
            ce: Placed::filled(sizes.batch, offset, f32::NAN),
            g: Placed::filled(sizes.bk, offset, f32::NAN),
            mask: Placed::filled(sizes.bc, offset, 0xAB),
            stats: Placed::filled(1, offset, bytemuck::Zeroable::zeroed()),
            // Zero before its first use (the tickets); padding 0xCD. In u64s:
            // the scratch is 8-byte aligned (layout::SCRATCH_ALIGN) at any offset.
            scratch: Placed::new(
                &vec![0u64; sizes.scratch_bytes.div_ceil(8)],
                offset,
                u64::from_ne_bytes([0xCD; 8]),
            ),
            act: Placed::new(&l.act_in, offset, -1),
            inh: Placed::new(&l.inh_in, offset, -1),
            total: Placed::new(&l.total_in, offset, -1),
            dy: Placed::new(&l.dy.iter().map(|&v| T::from_f32(v as f32)).collect::<Vec<_>>(), offset, nan),
        })
        .collect();
    let tview = SliceRef::host(dev, targets.get()).map_err(e)?;
    for l in layers.iter_mut() {
        let x = TensorRef::host(dev, l.x.get(), &case.dims).map_err(e)?;
        let w = SliceRef::host(dev, l.w.get()).map_err(e)?;
        let mut y = TensorMut::host(dev, l.y.get_mut(), &case.dims).map_err(e)?;
        let mut keep = SliceMut::host(dev, l.keep.get_mut()).map_err(e)?;
        let mut counters = CountersMut {
            act: SliceMut::host(dev, l.act.get_mut()).map_err(e)?,
            inh: SliceMut::host(dev, l.inh.get_mut()).map_err(e)?,
            total: SliceMut::host(dev, l.total.get_mut()).map_err(e)?,
        };
        let mut aux = AuxMut {
            v: SliceMut::host(dev, l.v.get_mut()).map_err(e)?,
            logits: SliceMut::host(dev, l.logits.get_mut()).map_err(e)?,
            ce: SliceMut::host(dev, l.ce.get_mut()).map_err(e)?,
            g: SliceMut::host(dev, l.g.get_mut()).map_err(e)?,
            mask: SliceMut::host(dev, l.mask.get_mut()).map_err(e)?,
            stats: SliceMut::host(dev, l.stats.get_mut()).map_err(e)?,
            scratch: SliceMut::host(
                dev,
                &mut bytemuck::cast_slice_mut(l.scratch.get_mut())[..sizes.scratch_bytes],
            )
            .map_err(e)?,
        };
        fused::forward_train(
            &cfg,
            TrainIn { x: &x, w: &w, targets: &tview, check: TargetCheck::Device },
            &mut counters,
            aiec::gpu::fused::Update::Now(case.update),
            TrainOut { y: &mut y, keep: &mut keep, aux: &mut aux },
        )
        .map_err(e)?;
    }
    dev.synchronize().map_err(e)?;
    let mut losses = Placed::filled(1, offset, bytemuck::Zeroable::zeroed());
    {
        let parts: Vec<LayerLoss> = layers
            .iter()
            .map(|l| LayerLoss {
                ce: SliceRef::host(dev, l.ce.get()).expect("sim"),
                stats: SliceRef::host(dev, l.stats.get()).expect("sim"),
            })
            .collect();
        let coefs = LossCoefs::new(case.aux_coef, case.gate_coef).map_err(e)?;
        fused::combine(&parts, case.batch, coefs, &mut SliceMut::host(dev, losses.get_mut()).map_err(e)?)
            .map_err(e)?;
    }
    let read: AiecLosses = losses.get()[0];
    let mut out = Outputs {
        layers: Vec::new(),
        aux_loss: read.aux as f64,
        gate_loss: read.gate as f64,
        gate_count: read.count as i64,
    };
    for l in layers.iter_mut() {
        let mut dx = Placed::filled(n, offset, nan);
        let mut dw = Placed::filled(k * c, offset, f32::NAN);
        let mut dv = Placed::filled(sizes.bc, offset, f32::NAN);
        {
            let saved = SavedRef {
                v: SliceRef::host(dev, l.v.get()).map_err(e)?,
                g: SliceRef::host(dev, l.g.get()).map_err(e)?,
                mask: SliceRef::host(dev, l.mask.get()).map_err(e)?,
            };
            let scales = Scales { losses: SliceRef::host(dev, losses.get()).map_err(e)?, row_scale: None };
            let train = TrainBackward {
                w: &SliceRef::host(dev, l.w.get()).map_err(e)?,
                saved: &saved,
                scales: &scales,
                dv: &mut SliceMut::host(dev, dv.get_mut()).map_err(e)?,
                dw: &mut SliceMut::host(dev, dw.get_mut()).map_err(e)?,
                mode: DwMode::Write,
            };
            let dx = Dx::Into {
                dy: &TensorRef::host(dev, l.dy.get(), &case.dims).map_err(e)?,
                dx: &mut TensorMut::host(dev, dx.get_mut(), &case.dims).map_err(e)?,
            };
            let keep = SliceRef::host(dev, l.keep.get()).map_err(e)?;
            fused::backward(&cfg, &dims, &keep, Some(train), dx).map_err(e)?;
        }
        // Nothing was written outside a buffer.
        let pads_ok = l.y.padding().iter().all(|v| v.to_f32().is_nan())
            && l.keep.padding().iter().all(|&v| v == 0xDEAD_BEEF)
            && l.mask.padding().iter().all(|&v| v == 0xAB)
            && l.scratch.padding().iter().all(|&v| v == u64::from_ne_bytes([0xCD; 8]))
            && l.act.padding().iter().chain(l.inh.padding()).chain(l.total.padding()).all(|&v| v == -1)
            && dx.padding().iter().all(|v| v.to_f32().is_nan())
            && dw.padding().iter().chain(dv.padding()).chain(l.v.padding()).all(|v| v.is_nan());
        if !pads_ok {
            return Err(format!("a kernel wrote outside its buffer (offset {offset})"));
        }
        let widen = |v: &[T]| v.iter().map(|x| x.to_f32() as f64).collect::<Vec<f64>>();
        let widen32 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        out.layers.push(LayerOutputs {
            y: widen(l.y.get()),
            v: widen32(l.v.get()),
            logits: widen32(l.logits.get()),
            mask: l.mask.get().to_vec(),
            act: l.act.get().to_vec(),
            inh: l.inh.get().to_vec(),
            total: l.total.get().to_vec(),
            gate_sum_sq: l.stats.get()[0].sum_sq as f64,
            dx: widen(dx.get()),
            dw: widen32(dw.get()),
        });
    }
    Ok(out)
}
