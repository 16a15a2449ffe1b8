//! A caller's training step in miniature, on memory the caller owns.
//!
//! The caller creates the stream and every buffer: cudarc memory on its own
//! stream when there is a GPU, plain host vectors on the simulator otherwise.
//! Two AIEC layers run forward, loss and backward through views, on device
//! targets, with the layers' workspaces; every output (y, dx, dW of both
//! layers, the counters and the losses) is compared with the CPU reference,
//! and the program exits non-zero on a mismatch.
//!
//! ```sh
//! cargo run --release --example external_memory
//! ```

use std::process::ExitCode;
use std::sync::Arc;

use aiec::cpu::{self, AiecLayer, LossCoefs};
use aiec::gpu::{self, DwMode, Dx, GpuLayer, GradsMut, Targets, Workspace};
use aiec::init::SplitMix64;
use aiec::{AiecConfig, Device, Element, Pool, SliceMut, SliceRef, TensorMut, TensorRef};
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};

/// Memory the caller owns: a cudarc allocation on the caller's stream, or a
/// host vector for the simulator.
enum Mem<T> {
    Cuda(CudaSlice<T>),
    Host(Vec<T>),
}

/// Where the caller allocates.
enum Caller {
    Cuda(Arc<CudaStream>),
    // Only the simulator runs kernels on host memory.
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    Host,
}

impl Caller {
    fn upload<T: DeviceRepr + Copy>(&self, data: &[T]) -> aiec::Result<Mem<T>> {
        Ok(match self {
            Caller::Cuda(s) => Mem::Cuda(s.clone_htod(data).map_err(driver)?),
            Caller::Host => Mem::Host(data.to_vec()),
        })
    }
    fn zeros<T: DeviceRepr + ValidAsZeroBits + Copy + Default>(&self, n: usize) -> aiec::Result<Mem<T>> {
        Ok(match self {
            Caller::Cuda(s) => Mem::Cuda(s.alloc_zeros(n).map_err(driver)?),
            Caller::Host => Mem::Host(vec![T::default(); n]),
        })
    }
    fn read<T: DeviceRepr + Copy + Default>(&self, m: &Mem<T>) -> aiec::Result<Vec<T>> {
        Ok(match (self, m) {
            (Caller::Cuda(s), Mem::Cuda(c)) => s.clone_dtoh(c).map_err(driver)?,
            (_, Mem::Host(v)) => v.clone(),
            _ => unreachable!("memory of the other kind"),
        })
    }
}

fn driver(e: cudarc::driver::DriverError) -> aiec::AiecError {
    aiec::AiecError::Driver { call: "cudarc", message: format!("{e:?}") }
}

impl<T: Element> Mem<T> {
    fn tensor<'a>(&'a self, dev: &'a Device, dims: &[usize]) -> aiec::Result<TensorRef<'a>> {
        match self {
            Mem::Cuda(c) => TensorRef::cuda(dev, c, dims),
            Mem::Host(v) => TensorRef::host(dev, v, dims),
        }
    }
    fn tensor_mut<'a>(&'a mut self, dev: &'a Device, dims: &[usize]) -> aiec::Result<TensorMut<'a>> {
        match self {
            Mem::Cuda(c) => TensorMut::cuda(dev, c, dims),
            Mem::Host(v) => TensorMut::host(dev, v, dims),
        }
    }
}

impl<T: bytemuck::Pod> Mem<T> {
    fn slice<'a>(&'a self, dev: &'a Device) -> aiec::Result<SliceRef<'a, T>> {
        match self {
            Mem::Cuda(c) => SliceRef::cuda(dev, c),
            Mem::Host(v) => SliceRef::host(dev, v),
        }
    }
    fn slice_mut<'a>(&'a mut self, dev: &'a Device) -> aiec::Result<SliceMut<'a, T>> {
        match self {
            Mem::Cuda(c) => SliceMut::cuda(dev, c),
            Mem::Host(v) => SliceMut::host(dev, v),
        }
    }
}

/// The largest of `|got - want| / max(|want|, floor)` (floor: 0.1 of the
/// largest `|want|`, as the tests judge sums taken in another order).
fn max_error(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    got.iter().zip(want).map(|(g, w)| (g - w).abs() / w.abs().max(0.1 * scale).max(1e-30)).fold(0.0, f64::max)
}

fn run() -> aiec::Result<bool> {
    // The caller's device and stream.
    let (dev, caller) = match Device::cuda(0) {
        Ok(own) => {
            let stream = own.cuda_stream().expect("CUDA").context().new_stream().map_err(driver)?;
            (Device::from_cuda_stream(stream.clone())?, Caller::Cuda(stream))
        }
        #[cfg(feature = "sim")]
        Err(e) => {
            println!("no GPU ({e}); running on the simulator with host memory");
            (Device::sim(), Caller::Host)
        }
        #[cfg(not(feature = "sim"))]
        Err(e) => return Err(e),
    };
    println!("device: {}", dev.label());

    let (b, t, c, k) = (12, 9, 48, 4);
    let dims = [b, t, c];
    let n = b * t * c;
    let cfg = AiecConfig::with_interval(c, k, 0.0, 1, Pool::AvgToken)?;
    let mut rng = SplitMix64::new(2026);
    let x: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 2.0) as f32).collect();
    let dy: Vec<f32> = (0..n).map(|_| rng.uniform(-0.05, 0.05) as f32).collect();
    let targets: Vec<i64> = (0..b).map(|i| (i % k) as i64).collect();

    // Every buffer of the step is the caller's.
    let xm = caller.upload(&x)?;
    let dym = caller.upload(&dy)?;
    let tm = caller.upload(&targets)?;
    let mut y: [Mem<f32>; 2] = [caller.zeros(n)?, caller.zeros(n)?];
    let mut dx: [Mem<f32>; 2] = [caller.zeros(n)?, caller.zeros(n)?];
    let mut dw: [Mem<f32>; 2] = [caller.zeros(k * c)?, caller.zeros(k * c)?];

    // The layers own W and the counters; their workspaces, the per-step buffers.
    let mut layers = [GpuLayer::new(&dev, cfg, 1)?, GpuLayer::new(&dev, cfg, 2)?];
    let loss_ws = Workspace::new(&dev);
    let losses = {
        let tv = tm.slice(&dev)?;
        let [l0, l1] = &mut layers;
        let [y0, y1] = &mut y;
        let r0 = l0.forward_into(
            &xm.tensor(&dev, &dims)?,
            Some(Targets::Device(&tv)),
            &mut y0.tensor_mut(&dev, &dims)?,
        )?;
        let r1 = l1.forward_into(
            &y0.tensor(&dev, &dims)?,
            Some(Targets::Device(&tv)),
            &mut y1.tensor_mut(&dev, &dims)?,
        )?;
        let losses = gpu::combine_in(&[&r0, &r1], LossCoefs::PAPER, &loss_ws)?;
        let [dx0, dx1] = &mut dx;
        let [dw0, dw1] = &mut dw;
        l1.backward_into(
            &r1,
            GradsMut {
                dx: Dx::Into { dy: &dym.tensor(&dev, &dims)?, dx: &mut dx1.tensor_mut(&dev, &dims)? },
                dw: &mut dw1.slice_mut(&dev)?,
                mode: DwMode::Write,
            },
            &losses,
        )?;
        l0.backward_into(
            &r0,
            GradsMut {
                dx: Dx::Into { dy: &dx1.tensor(&dev, &dims)?, dx: &mut dx0.tensor_mut(&dev, &dims)? },
                dw: &mut dw0.slice_mut(&dev)?,
                mode: DwMode::Write,
            },
            &losses,
        )?;
        losses.read()? // the step's only synchronisation
    };

    // The CPU reference of the same step.
    let mut cl = [AiecLayer::<f32>::new(cfg, 1)?, AiecLayer::<f32>::new(cfg, 2)?];
    let c0 = cl[0].forward(&x, &dims, Some(&targets))?;
    let c1 = cl[1].forward(&c0.y, &dims, Some(&targets))?;
    let cpu_losses = cpu::combine(&[&c0, &c1], LossCoefs::PAPER)?;
    let g1 = cl[1].backward(&c1, &dy, &cpu_losses.scales)?;
    let g0 = cl[0].backward(&c0, &g1.dx, &cpu_losses.scales)?;

    let widen = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let rows: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("y, layer 1", widen(&caller.read(&y[0])?), widen(&c0.y)),
        ("y, layer 2", widen(&caller.read(&y[1])?), widen(&c1.y)),
        ("dx, layer 1", widen(&caller.read(&dx[0])?), widen(&g0.dx)),
        ("dx, layer 2", widen(&caller.read(&dx[1])?), widen(&g1.dx)),
        ("dW, layer 1", widen(&caller.read(&dw[0])?), widen(&g0.dw)),
        ("dW, layer 2", widen(&caller.read(&dw[1])?), widen(&g1.dw)),
        ("aux loss", vec![losses.aux as f64], vec![cpu_losses.aux as f64]),
        ("gate loss", vec![losses.gate as f64], vec![cpu_losses.gate as f64]),
    ];
    const TOL: f64 = 1e-5;
    let mut ok = true;
    println!("{:<12} {:>10}  (f32 against the CPU reference, tolerance {TOL:e})", "output", "max error");
    for (name, got, want) in &rows {
        let e = max_error(got, want);
        let pass = e <= TOL && got.len() == want.len();
        ok &= pass;
        println!("{name:<12} {e:>10.2e}  {}", if pass { "ok" } else { "MISMATCH" });
    }
    for (i, (g, c)) in layers.iter().zip(&cl).enumerate() {
        let same = &g.counters()? == c.counters();
        ok &= same;
        println!("counters, layer {}: {}", i + 1, if same { "equal" } else { "MISMATCH" });
    }
    let counted: i64 = cl.iter().map(|l| l.counters().total.iter().map(|t| t - 1).sum::<i64>()).sum();
    println!("samples counted: {counted}; gate count N = {}", losses.gate_count);
    Ok(ok)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => {
            println!("external_memory: every output matches the CPU reference");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("external_memory: MISMATCH");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("external_memory: {e}");
            ExitCode::FAILURE
        }
    }
}
