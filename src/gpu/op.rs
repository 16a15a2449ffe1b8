//! Op level on a device: one layer's fused forward and backward, stateless,
//! mirroring [`crate::cpu::op`] name for name.
//!
//! A training forward is three launches (x pass; logits, CE and counters; gate)
//! and a backward two (dv and dW; dy pass), with no host synchronisation and no
//! device-to-host copy. Everything is checked on the host before the first
//! launch, targets included, so bad input never moves a counter.

use crate::buffer::Buffer;
use crate::config::{AiecConfig, InputDims};
use crate::counters::Counters;
use crate::cpu::op::check_targets;
use crate::device::Device;
use crate::error::{AiecError, Result};
use crate::gpu::loss::GpuLosses;
use crate::launch;
use crate::params::{AiecGateStats, AiecShape};
use crate::tensor::Tensor;

/// The counters of one layer in device memory.
pub struct GpuCounters {
    classes: usize,
    channels: usize,
    /// `[K, C]`.
    pub act: Buffer<i64>,
    /// `[K, C]`.
    pub inh: Buffer<i64>,
    /// `[K]`.
    pub total: Buffer<i64>,
}

impl GpuCounters {
    /// Fresh counters (`act = inh = 0`, `total = 1`) on `device`.
    pub fn new(device: &Device, classes: usize, channels: usize) -> Result<Self> {
        Self::from_host(device, &Counters::new(classes, channels))
    }

    /// Uploads host counters.
    pub fn from_host(device: &Device, c: &Counters) -> Result<Self> {
        Ok(GpuCounters {
            classes: c.classes(),
            channels: c.channels(),
            act: Buffer::from_slice(device, &c.act)?,
            inh: Buffer::from_slice(device, &c.inh)?,
            total: Buffer::from_slice(device, &c.total)?,
        })
    }

    /// Downloads the counters (waits for the device).
    pub fn to_host(&self) -> Result<Counters> {
        Counters::from_parts(
            self.classes,
            self.channels,
            self.act.to_vec()?,
            self.inh.to_vec()?,
            self.total.to_vec()?,
        )
    }

    /// Resets to `act = inh = 0`, `total = 1`.
    pub fn reset(&mut self) -> Result<()> {
        let fresh = Counters::new(self.classes, self.channels);
        self.act.copy_from(&fresh.act)?;
        self.inh.copy_from(&fresh.inh)?;
        self.total.copy_from(&fresh.total)
    }

    /// `K`.
    pub fn classes(&self) -> usize {
        self.classes
    }
    /// `C`.
    pub fn channels(&self) -> usize {
        self.channels
    }
}

/// What one forward leaves on the device for its backward and its losses.
pub struct GpuRecord {
    /// The input shape, planned for the layer's pooling mode.
    pub dims: InputDims,
    /// `y`, the layer's output (shape and type of `x`).
    pub y: Tensor,
    /// The AIEC part, present on a forward with targets.
    pub aux: Option<GpuAux>,
}

/// The device buffers of a training forward.
pub struct GpuAux {
    /// `ceil(n / 32)` words: bit `i % 32` of word `i / 32` is NOT `x[i] <= tau`.
    pub keep: Buffer<u32>,
    /// `[B]`.
    pub targets: Buffer<i64>,
    /// `[B, C]` pooled activation.
    pub v: Buffer<f32>,
    /// `[B, K]`.
    pub logits: Buffer<f32>,
    /// `[B]` cross-entropy of each row.
    pub ce: Buffer<f32>,
    /// `[B, K]`: `softmax(logits) - onehot(t)`, unscaled.
    pub g: Buffer<f32>,
    /// `[B, C]` consensus mask (0/1).
    pub mask: Buffer<u8>,
    /// `S`, `N` of this layer.
    pub stats: Buffer<AiecGateStats>,
    /// `K`.
    pub classes: usize,
    /// Whether this forward updated the counters.
    pub updated: bool,
}

impl GpuRecord {
    /// Bytes kept on the device between forward and backward, `y` (the output)
    /// excluded: the keep bits and the `O(B*C + B*K)` buffers.
    pub fn saved_bytes(&self) -> usize {
        self.aux.as_ref().map_or(0, |a| {
            a.keep.byte_len()
                + a.targets.byte_len()
                + a.v.byte_len()
                + a.logits.byte_len()
                + a.ce.byte_len()
                + a.g.byte_len()
                + a.mask.byte_len()
                + a.stats.byte_len()
        })
    }
}

/// Gradients of one layer on the device.
pub struct GpuGradients {
    /// Shape and type of `x`.
    pub dx: Tensor,
    /// `[K, C]` (zero for a forward without targets).
    pub dw: Buffer<f32>,
}

fn check_common(cfg: &AiecConfig, x: &Tensor, w: &Buffer<f32>, counters: &GpuCounters) -> Result<InputDims> {
    let plan = cfg.plan_input(x.shape())?;
    let kc = cfg.classes() * cfg.channels();
    if w.len() != kc {
        return Err(AiecError::LengthMismatch { what: "W [K, C]", expected: kc, got: w.len() });
    }
    for (what, dev) in [("W", w.device()), ("counters", counters.act.device())] {
        if dev != x.device() {
            return Err(AiecError::DeviceMismatch {
                what,
                expected: x.device().label().to_string(),
                got: dev.label().to_string(),
            });
        }
    }
    if (counters.classes, counters.channels) != (cfg.classes(), cfg.channels()) {
        return Err(AiecError::LengthMismatch {
            what: "counters [K, C]",
            expected: kc,
            got: counters.classes * counters.channels,
        });
    }
    Ok(plan)
}

/// One layer's forward on `x`'s device; see [`crate::cpu::op::forward`].
///
/// Without targets: the threshold alone, one launch. With targets: three
/// launches, no host synchronisation; the counters update on the device when
/// `update` is true. Targets are checked on the host before anything runs.
pub fn forward(
    cfg: &AiecConfig,
    x: &Tensor,
    w: &Buffer<f32>,
    targets: Option<&[i64]>,
    counters: &mut GpuCounters,
    update: bool,
) -> Result<GpuRecord> {
    let plan = check_common(cfg, x, w, counters)?;
    if let Some(t) = targets {
        check_targets(t, plan.batch, cfg.classes())?;
    }
    let dev = x.device();
    let tau = cfg.tau() as f32;
    // Kernels write every element of y and of the aux buffers (the simulator
    // fills unwritten memory with NaN bytes, so the tests would see a gap); only
    // stats (not written for an empty batch) and the gate's ticket start at zero.
    let mut y = Tensor::unwritten(dev, x.dtype(), x.shape())?;
    let Some(targets) = targets else {
        crate::ops::threshold::forward_into(x, &mut y, tau)?;
        return Ok(GpuRecord { dims: plan, y, aux: None });
    };

    let (b, c, k) = (plan.batch, plan.channels, cfg.classes());
    let shape = AiecShape::new(&plan, k, tau, update);
    let n = plan.len();
    let aux = GpuAux {
        keep: Buffer::unwritten(dev, n.div_ceil(32))?,
        targets: Buffer::from_slice(dev, targets)?,
        v: Buffer::unwritten(dev, b * c)?,
        logits: Buffer::unwritten(dev, b * k)?,
        ce: Buffer::unwritten(dev, b)?,
        g: Buffer::unwritten(dev, b * k)?,
        mask: Buffer::unwritten(dev, b * c)?,
        stats: Buffer::zeros(dev, 1)?,
        classes: k,
        updated: update,
    };
    let gate_grid = launch::gate_grid(&shape);
    let block_sum_sq: Buffer<f32> = Buffer::unwritten(dev, gate_grid as usize)?;
    let block_count: Buffer<u64> = Buffer::unwritten(dev, gate_grid as usize)?;
    // The tickets of the two last-block-done kernels, zero before and after
    // each launch: one per logits sample group, then the gate's.
    let groups = launch::logits_groups(&shape);
    let done: Buffer<u32> = Buffer::zeros(dev, groups + 1)?;
    let gate_done = done.address() + 4 * groups as u64;

    let plans = [
        launch::aiec_fwd_x(x.dtype(), &shape, x.address(), y.address(), aux.keep.address(), aux.v.address()),
        launch::aiec_fwd_logits(
            &shape,
            [aux.v.address(), w.address(), aux.targets.address()],
            [aux.logits.address(), aux.ce.address(), aux.g.address()],
            [counters.act.address(), counters.inh.address(), counters.total.address()],
            done.address(),
        ),
        launch::aiec_fwd_gate(
            &shape,
            [
                aux.v.address(),
                w.address(),
                aux.targets.address(),
                counters.act.address(),
                counters.inh.address(),
            ],
            [
                aux.mask.address(),
                block_sum_sq.address(),
                block_count.address(),
                gate_done,
                aux.stats.address(),
            ],
        ),
    ];
    for p in plans.iter().flatten() {
        // SAFETY: every address is a live buffer of this device sized for the
        // shape the plan was made from (allocated above or checked by
        // `check_common`); the buffers the kernels write (y, the aux buffers,
        // the counters via `&mut`) are not used elsewhere during the launches,
        // which run in order on one stream.
        unsafe { dev.launch(p) }?;
    }
    Ok(GpuRecord { dims: plan, y, aux: Some(aux) })
}

fn check_backward(cfg: &AiecConfig, record: &GpuRecord, w: &Buffer<f32>, dy: &Tensor) -> Result<()> {
    record.y.expect_like("dy", dy)?;
    let kc = cfg.classes() * cfg.channels();
    if w.len() != kc {
        return Err(AiecError::LengthMismatch { what: "W [K, C]", expected: kc, got: w.len() });
    }
    if record.dims.channels != cfg.channels() {
        return Err(AiecError::LengthMismatch {
            what: "record channels C",
            expected: cfg.channels(),
            got: record.dims.channels,
        });
    }
    if w.device() != dy.device() {
        return Err(AiecError::DeviceMismatch {
            what: "W",
            expected: dy.device().label().to_string(),
            got: w.device().label().to_string(),
        });
    }
    Ok(())
}

/// One layer's backward, writing `dx` over `dy` (in place); returns `dW`.
/// Two launches for a training record, one for an inference record; no host
/// synchronisation. `losses` must come from [`crate::gpu::combine`] over the
/// records of every layer sharing the targets.
pub fn backward_inplace(
    cfg: &AiecConfig,
    record: &GpuRecord,
    w: &Buffer<f32>,
    dy: &mut Tensor,
    losses: &GpuLosses,
) -> Result<Buffer<f32>> {
    check_backward(cfg, record, w, dy)?;
    let Some(aux) = &record.aux else {
        // Inference: kept elements are exactly those with y != 0 (x > tau >= 0,
        // or NaN), so the threshold gradient runs on y with tau = 0.
        crate::ops::threshold::backward_inplace(&record.y, dy, 0.0)?;
        return Buffer::zeros(dy.device(), cfg.classes() * cfg.channels());
    };
    let a = dy.address();
    // SAFETY: `dy` is borrowed mutably, so the kernel may write dx over it.
    unsafe { launch_backward(cfg, record, aux, w, dy, a, losses) }
}

/// One layer's backward into a new `dx`; see [`backward_inplace`].
pub fn backward(
    cfg: &AiecConfig,
    record: &GpuRecord,
    w: &Buffer<f32>,
    dy: &Tensor,
    losses: &GpuLosses,
) -> Result<GpuGradients> {
    check_backward(cfg, record, w, dy)?;
    let dev = dy.device();
    let Some(aux) = &record.aux else {
        let dx = crate::ops::threshold::backward(&record.y, dy, 0.0)?;
        return Ok(GpuGradients { dx, dw: Buffer::zeros(dev, cfg.classes() * cfg.channels())? });
    };
    let dx = Tensor::unwritten(dev, dy.dtype(), dy.shape())?;
    // SAFETY: `dx` is fresh and owned here; the dy pass writes all of it.
    let dw = unsafe { launch_backward(cfg, record, aux, w, dy, dx.address(), losses) }?;
    Ok(GpuGradients { dx, dw })
}

/// The two backward launches, reading `dy` and writing `dx` at `dx_addr`.
///
/// # Safety
/// `dx_addr` must address a live buffer of `dy`'s device, shape and type that
/// nothing else reads or writes during the launches (it may be `dy` itself).
unsafe fn launch_backward(
    cfg: &AiecConfig,
    record: &GpuRecord,
    aux: &GpuAux,
    w: &Buffer<f32>,
    dy: &Tensor,
    dx_addr: u64,
    losses: &GpuLosses,
) -> Result<Buffer<f32>> {
    let dev = dy.device();
    losses.check_device(dev)?;
    // Both written in full by aiec_bwd_dv_dw (dW even for an empty batch).
    let dw = Buffer::unwritten(dev, cfg.classes() * cfg.channels())?;
    let shape = AiecShape::new(&record.dims, aux.classes, cfg.tau() as f32, aux.updated);
    let dv: Buffer<f32> = Buffer::unwritten(dev, record.dims.batch * record.dims.channels)?;
    let plans = [
        launch::aiec_bwd_dv_dw(
            &shape,
            [aux.v.address(), w.address(), aux.g.address(), aux.mask.address(), losses.address()],
            [dv.address(), dw.address()],
        ),
        launch::aiec_bwd_x(dy.dtype(), &shape, dy.address(), aux.keep.address(), dv.address(), dx_addr),
    ];
    for p in plans.iter().flatten() {
        // SAFETY: all buffers are live on this device and sized for `shape`
        // (checked by the callers and at forward); dx is the caller's promise.
        unsafe { dev.launch(p) }?;
    }
    Ok(dw)
}
