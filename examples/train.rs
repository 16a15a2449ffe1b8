//! Training with AIEC in candle, against the same network with ReLU.
//!
//! ```sh
//! cargo run --release --features candle --example train -- [--out DIR] [--epochs N] [--seed S]
//! ```
//!
//! Two tasks: the 8x8 handwritten digits in `data/digits/` (its fixed split,
//! 1,442 train / 355 test), and a synthetic task whose 10 classes live in 16
//! of 64 input features while the other 48 are pure noise. On each, an MLP
//! `64 -> H -> act -> H -> act -> 10` trains twice from the same weights, with
//! the same seed, batches, schedule and epochs: with AIEC (the paper's
//! coefficients, aux 1 and gate 200) as `act`, and with ReLU and no auxiliary
//! loss. Per epoch, on the test set: accuracy; sparsity (the fraction of zeros
//! in both hidden activations); the fraction of (class, channel) pairs the gate
//! calls irrelevant (`act <= inh` and `W <= 0`, from the counters); and the
//! mean squared activation on the masked (sample, channel) entries (the gate
//! loss on the test set).
//!
//! The ReLU network has no gate of its own, so it gets a probe: the same AIEC
//! units on its detached hidden activations (their aux cross-entropy trains the
//! probe's `W`; nothing reaches the network), so the same rule measures it.
//! Evaluation mode resets the counters (the spec), so each epoch's measurement
//! snapshots them first and restores them (`set_counters`) for the test pass
//! and for training on: measuring changes nothing in training.
//!
//! Writes `DIR/metrics.json` and `DIR/train.png` (default `target/train`).

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::time::Instant;

use aiec::candle::{losses, Aiec};
use aiec::cpu::LossCoefs;
use aiec::init::SplitMix64;
use aiec::{AiecConfig, Pool};
use candle_core::{DType, Device, Module, Result, Tensor, Var, D};
use candle_nn::{Linear, Optimizer, VarBuilder, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

const HIDDEN: usize = 128;
const CLASSES: usize = 10;
const BATCH: usize = 64;
const LR: f64 = 1e-3;

/// A classification task: inputs `[N, D]` and labels, train and test.
struct Task {
    name: &'static str,
    train: (Vec<f32>, Vec<u32>),
    test: (Vec<f32>, Vec<u32>),
    dim: usize,
    /// Inputs that carry no signal (the synthetic task's noise features).
    noise: Vec<usize>,
}

/// The digits file with the split of data/digits/README.md: within each class,
/// rows numbered in file order, index % 5 == 4 goes to test. Pixels / 16.
fn digits() -> Task {
    let gz: &[u8] = include_bytes!("../data/digits/digits.csv.gz");
    let mut csv = String::new();
    flate2::read::GzDecoder::new(gz).read_to_string(&mut csv).expect("digits.csv.gz");
    let (mut train, mut test) = ((vec![], vec![]), (vec![], vec![]));
    let mut seen = [0usize; CLASSES];
    for line in csv.lines() {
        let v: Vec<u32> = line.split(',').map(|s| s.parse().expect("an integer")).collect();
        let label = v[64];
        let part = if seen[label as usize] % 5 == 4 { &mut test } else { &mut train };
        seen[label as usize] += 1;
        part.0.extend(v[..64].iter().map(|&p| p as f32 / 16.0));
        part.1.push(label);
    }
    assert_eq!((train.1.len(), test.1.len()), (1442, 355), "the README's split");
    Task { name: "digits", train, test, dim: 64, noise: vec![] }
}

fn gaussian(rng: &mut SplitMix64) -> f32 {
    let (u, v) = (rng.next_f64().max(1e-300), rng.next_f64());
    ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
}

/// 10 classes whose signal lives in 16 of 64 features: class means in those
/// (scattered) features, unit Gaussian noise everywhere, the other 48 pure noise.
fn synthetic(seed: u64) -> Task {
    let (dim, informative) = (64, 16);
    let mut rng = SplitMix64::new(seed ^ 0x5157);
    let mut features: Vec<usize> = (0..dim).collect();
    shuffle(&mut features, &mut rng);
    let (signal, mut noise) = (features[..informative].to_vec(), features[informative..].to_vec());
    noise.sort();
    let means: Vec<f32> = (0..CLASSES * informative).map(|_| 0.8 * gaussian(&mut rng)).collect();
    let mut sample = |n: usize| {
        let (mut x, mut y) = (Vec::with_capacity(n * dim), Vec::with_capacity(n));
        for i in 0..n {
            let k = i % CLASSES;
            let mut row: Vec<f32> = (0..dim).map(|_| gaussian(&mut rng)).collect();
            for (j, &f) in signal.iter().enumerate() {
                row[f] += means[k * informative + j];
            }
            x.extend(row);
            y.push(k as u32);
        }
        (x, y)
    };
    let (train, test) = (sample(2000), sample(1000));
    Task { name: "synthetic", train, test, dim, noise }
}

fn shuffle<T>(v: &mut [T], rng: &mut SplitMix64) {
    for i in (1..v.len()).rev() {
        v.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
}

/// A trainable tensor with values of our own (candle's generator cannot be seeded).
fn param(vb: &VarBuilder, name: &str, shape: &[usize], values: Vec<f32>) -> Result<Tensor> {
    let t = vb.get(shape, name)?;
    Var::from_tensor(&t)?.set(&Tensor::from_vec(values, shape, vb.device())?)?;
    Ok(t)
}

/// `in -> out`, PyTorch's default initialisation `U(-1/sqrt(in), 1/sqrt(in))`, from `seed`.
fn linear(vb: VarBuilder, inputs: usize, outputs: usize, seed: u64) -> Result<Linear> {
    let mut rng = SplitMix64::new(seed);
    let a = 1.0 / (inputs as f64).sqrt();
    let mut u = |n: usize| (0..n).map(|_| rng.uniform(-a, a) as f32).collect::<Vec<_>>();
    let w = param(&vb, "weight", &[outputs, inputs], u(inputs * outputs))?;
    let b = param(&vb, "bias", &[outputs], u(outputs))?;
    Ok(Linear::new(w, Some(b)))
}

/// The two AIEC layers: the network's activations, or the ReLU run's probes.
struct Units([Aiec; 2]);

impl Units {
    fn new(vb: &VarBuilder, seed: u64) -> Result<Units> {
        let cfg = AiecConfig::new(HIDDEN, CLASSES, 0.0, Pool::None).map_err(aiec::candle::to_candle)?;
        let a = |i: u64| Aiec::new_seeded(cfg, vb.pp(format!("aiec{i}")), seed + 10 + i);
        Ok(Units([a(0)?, a(1)?]))
    }
    fn each(&self, f: impl Fn(&Aiec)) {
        self.0.iter().for_each(f)
    }
    /// The fraction of (class, channel) pairs with `act <= inh` and `W <= 0`.
    fn masked_fraction(&self) -> Result<f64> {
        let mut masked = 0usize;
        for l in &self.0 {
            let (c, w) = (l.counters(), l.weight().flatten_all()?.to_vec1::<f32>()?);
            masked +=
                (0..CLASSES * HIDDEN).filter(|&i| c.inactive(i / HIDDEN, i % HIDDEN) && w[i] <= 0.0).count();
        }
        Ok(masked as f64 / (2 * CLASSES * HIDDEN) as f64)
    }
}

struct Net {
    layers: [Linear; 3],
    /// AIEC as the activation (`true`), or ReLU with `units` as probes.
    aiec: bool,
    units: Units,
}

/// What one forward gives: the logits, both hidden activations, the AIEC losses' objective.
struct Pass {
    logits: Tensor,
    hidden: [Tensor; 2],
    objective: Tensor,
    gate: f64,
    aux: f64,
}

impl Net {
    fn new(vb: &VarBuilder, dim: usize, aiec: bool, seed: u64) -> Result<Net> {
        let layers = [
            linear(vb.pp("l1"), dim, HIDDEN, seed + 1)?,
            linear(vb.pp("l2"), HIDDEN, HIDDEN, seed + 2)?,
            linear(vb.pp("head"), HIDDEN, CLASSES, seed + 3)?,
        ];
        Ok(Net { layers, aiec, units: Units::new(vb, seed)? })
    }

    fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Pass> {
        let [u0, u1] = &self.units.0;
        let mut h = x.clone();
        let mut hidden = Vec::new();
        for (l, unit) in self.layers[..2].iter().zip([u0, u1]) {
            let z = l.forward(&h)?;
            h = if self.aiec {
                unit.forward(&z, Some(t))?
            } else {
                let a = z.relu()?;
                unit.forward(&a.detach(), Some(t))?; // the probe: tau = 0 leaves a ReLU output as it is
                a
            };
            hidden.push(h.clone());
        }
        let l = losses(&[u0, u1])?;
        // The probe trains its W by the aux loss alone (its gate reaches nothing).
        let coefs = if self.aiec { LossCoefs::PAPER } else { LossCoefs::new(1.0, 0.0).expect("valid") };
        let v = l.values()?;
        let hidden = [hidden[0].clone(), hidden[1].clone()];
        Ok(Pass {
            logits: self.layers[2].forward(&h)?,
            hidden,
            objective: l.objective(coefs)?,
            gate: v.gate,
            aux: v.aux,
        })
    }
}

#[derive(Default)]
struct History {
    test_accuracy: Vec<f64>,
    sparsity: Vec<f64>,
    masked_fraction: Vec<f64>,
    masked_mean_square: Vec<f64>,
    train_loss: Vec<f64>,
    aux_loss: Vec<f64>,
    gate_loss: Vec<f64>,
    noise_weight_fraction: Vec<f64>,
    seconds: f64,
}

fn tensor(x: &[f32], dim: usize, dev: &Device) -> Result<Tensor> {
    Tensor::from_vec(x.to_vec(), (x.len() / dim, dim), dev)
}

/// Test-set measurements with the counters as training left them.
fn measure(net: &Net, task: &Task, h: &mut History, dev: &Device) -> Result<()> {
    h.masked_fraction.push(net.units.masked_fraction()?);
    let snapshots: Vec<_> = net.units.0.iter().map(|l| l.counters()).collect();
    net.units.each(|l| l.eval()); // resets the counters (the spec) ...
    for (l, c) in net.units.0.iter().zip(&snapshots) {
        l.set_counters(c.clone())?; // ... so restore them: the gate as training sees it
    }
    let x = tensor(&task.test.0, task.dim, dev)?;
    let t = Tensor::new(task.test.1.as_slice(), dev)?;
    let pass = net.forward(&x, &t)?;
    let pred = pass.logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    h.test_accuracy
        .push(pred.iter().zip(&task.test.1).filter(|(p, y)| p == y).count() as f64 / pred.len() as f64);
    let (mut zeros, mut all) = (0usize, 0usize);
    for a in &pass.hidden {
        let v = a.flatten_all()?.to_vec1::<f32>()?;
        zeros += v.iter().filter(|&&x| x == 0.0).count();
        all += v.len();
    }
    h.sparsity.push(zeros as f64 / all as f64);
    h.masked_mean_square.push(pass.gate);
    if !task.noise.is_empty() {
        let w = net.layers[0].weight().to_vec2::<f32>()?; // [H, D]
        let sq = |cols: &mut dyn Iterator<Item = usize>| {
            cols.map(|j| w.iter().map(|r| r[j] * r[j]).sum::<f32>()).sum::<f32>()
        };
        h.noise_weight_fraction.push((sq(&mut task.noise.iter().copied()) / sq(&mut (0..task.dim))) as f64);
    }
    net.units.each(|l| l.train()); // the restored counters carry on
    Ok(())
}

fn train(task: &Task, aiec: bool, epochs: usize, seed: u64, bar: &ProgressBar) -> Result<History> {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let net = Net::new(&vb, task.dim, aiec, seed)?;
    let mut opt =
        candle_nn::AdamW::new(varmap.all_vars(), candle_nn::ParamsAdamW { lr: LR, ..Default::default() })?;
    let mut h = History::default();
    let start = Instant::now();
    let n = task.train.1.len();
    let mut order: Vec<usize> = (0..n).collect();
    let run = if aiec { "aiec" } else { "relu" };
    for epoch in 0..epochs {
        shuffle(&mut order, &mut SplitMix64::new(seed ^ (epoch as u64 + 1) << 20));
        let (mut loss_sum, mut aux_sum, mut gate_sum, mut batches) = (0.0, 0.0, 0.0, 0.0);
        for chunk in order.chunks(BATCH) {
            let xb: Vec<f32> = chunk
                .iter()
                .flat_map(|&i| task.train.0[i * task.dim..(i + 1) * task.dim].iter().copied())
                .collect();
            let tb: Vec<u32> = chunk.iter().map(|&i| task.train.1[i]).collect();
            let t = Tensor::new(tb.as_slice(), &dev)?;
            let pass = net.forward(&tensor(&xb, task.dim, &dev)?, &t)?;
            let task_loss = candle_nn::loss::cross_entropy(&pass.logits, &t)?;
            loss_sum += task_loss.to_scalar::<f32>()? as f64;
            (aux_sum, gate_sum, batches) = (aux_sum + pass.aux, gate_sum + pass.gate, batches + 1.0);
            opt.backward_step(&(task_loss + pass.objective)?)?;
        }
        h.train_loss.push(loss_sum / batches);
        h.aux_loss.push(aux_sum / batches);
        h.gate_loss.push(gate_sum / batches);
        measure(&net, task, &mut h, &dev)?;
        bar.inc(1);
        let line = format!(
            "{} {run} epoch {:>3}/{epochs}: loss {:.4}, test accuracy {:.4}, sparsity {:.3}, masked {:.3}",
            task.name,
            epoch + 1,
            h.train_loss[epoch],
            h.test_accuracy[epoch],
            h.sparsity[epoch],
            h.masked_fraction[epoch]
        );
        if std::io::stderr().is_terminal() {
            bar.set_message(line);
        } else {
            println!("{line}"); // no bar without a terminal (CI): a plain line per epoch
        }
    }
    h.seconds = start.elapsed().as_secs_f64();
    Ok(h)
}

fn last(v: &[f64]) -> f64 {
    *v.last().unwrap_or(&f64::NAN)
}

fn history_json(h: &History) -> serde_json::Value {
    let mut v = json!({
        "test_accuracy": h.test_accuracy, "sparsity": h.sparsity, "masked_fraction": h.masked_fraction,
        "masked_mean_square": h.masked_mean_square, "train_loss": h.train_loss, "aux_loss": h.aux_loss,
        "gate_loss": h.gate_loss, "seconds": h.seconds,
    });
    if !h.noise_weight_fraction.is_empty() {
        v["noise_weight_fraction"] = json!(h.noise_weight_fraction);
    }
    v
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let mut out = PathBuf::from("target/train");
    let (mut epochs, mut seed) = (60usize, 0u64);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--out" => out = PathBuf::from(value()?),
            "--epochs" => epochs = value()?.parse()?,
            "--seed" => seed = value()?.parse()?,
            _ => return Err(format!("unknown argument {a}; use --out DIR, --epochs N, --seed S").into()),
        }
    }
    std::fs::create_dir_all(&out)?;
    let tasks = [digits(), synthetic(seed)];
    let bar = ProgressBar::new((tasks.len() * 2 * epochs) as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} epochs {elapsed} {msg}")?);
    let mut results = Vec::new();
    for task in &tasks {
        let aiec = train(task, true, epochs, seed, &bar)?;
        let relu = train(task, false, epochs, seed, &bar)?;
        results.push((task, aiec, relu));
    }
    bar.finish_and_clear();

    println!("\n| task | run | test accuracy | sparsity | masked (class, channel) pairs | mean v^2 on masked | first-layer weight on noise | time |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (task, aiec, relu) in &results {
        for (name, h) in [("AIEC", aiec), ("ReLU (+ probe)", relu)] {
            let noise = if h.noise_weight_fraction.is_empty() {
                "-".into()
            } else {
                format!("{:.3}", last(&h.noise_weight_fraction))
            };
            println!(
                "| {} | {name} | {:.3} | {:.3} | {:.3} | {:.2e} | {noise} | {:.1} s |",
                task.name,
                last(&h.test_accuracy),
                last(&h.sparsity),
                last(&h.masked_fraction),
                last(&h.masked_mean_square),
                h.seconds
            );
        }
    }

    let (_, da, dr) = &results[0];
    let (_, sa, sr) = &results[1];
    let metrics = json!({
        "task": "digits (data/digits, 1,442 train / 355 test)",
        "aiec": history_json(da),
        "relu": history_json(dr),
        "synthetic": { "aiec": history_json(sa), "relu": history_json(sr),
                       "noise_features": results[1].0.noise, "informative_features": 16, "features": 64 },
        "settings": { "epochs": epochs, "seed": seed, "batch": BATCH, "hidden": HIDDEN, "lr": LR,
                      "optimizer": "AdamW (candle-nn defaults: betas 0.9, 0.999, weight decay 0.01)",
                      "aux_coef": 1.0, "gate_coef": 200.0, "tau": 0.0, "update_interval": 5 },
        "notes": {
            "sparsity": "fraction of zeros in both hidden activations over the test set",
            "masked_fraction": "fraction of (class, channel) pairs with act <= inh and W <= 0, from the counters at the end of each epoch; for relu, from the probe (AIEC units on the detached activations, W trained by the aux loss only)",
            "masked_mean_square": "sum mask * v^2 / sum mask over the test set (the gate loss), with the mask of each sample's true class",
        },
    });
    std::fs::write(out.join("metrics.json"), serde_json::to_string_pretty(&metrics)?)?;
    plot::draw(&out.join("train.png"), &results.iter().map(|(t, a, r)| (t.name, a, r)).collect::<Vec<_>>())?;
    println!("\nwrote {} and {}", out.join("metrics.json").display(), out.join("train.png").display());
    Ok(())
}

/// The PNG: one row per task, one panel per quantity, AIEC against ReLU over the epochs.
mod plot {
    use std::error::Error;
    use std::io::BufWriter;
    use std::path::Path;

    use plotters::prelude::*;
    use plotters::style::FontStyle;

    use super::History;

    type Metric = (&'static str, fn(&History) -> &[f64]);
    const METRICS: [Metric; 4] = [
        ("test accuracy", |h| &h.test_accuracy),
        ("sparsity (zeros in hidden activations)", |h| &h.sparsity),
        ("masked (class, channel) pairs", |h| &h.masked_fraction),
        ("mean v^2 on masked entries (test)", |h| &h.masked_mean_square),
    ];

    pub fn draw(path: &Path, rows: &[(&str, &History, &History)]) -> Result<(), Box<dyn Error>> {
        // A font compiled in: no system fonts or fontconfig needed.
        plotters::style::register_font("sans-serif", FontStyle::Normal, notosans::REGULAR_TTF)
            .map_err(|_| "the Noto Sans font")?;
        plotters::style::register_font("sans-serif", FontStyle::Bold, notosans::BOLD_TTF)
            .map_err(|_| "the Noto Sans font")?;
        let (width, height) = (1600u32, 380 * rows.len() as u32 + 50);
        let mut rgb = vec![0u8; (width * height * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
            root.fill(&WHITE)?;
            let (title, body) = root.split_vertically(50);
            title.draw(&Text::new(
                "AIEC (aux 1, gate 200; red) against ReLU (blue, measured by a probe), same seed, batches and epochs",
                (20, 15),
                ("sans-serif", 22).into_font().style(FontStyle::Bold),
            ))?;
            let panels = body.split_evenly((rows.len(), METRICS.len()));
            for (r, (task, aiec, relu)) in rows.iter().enumerate() {
                for (m, (name, get)) in METRICS.iter().enumerate() {
                    let (a, b) = (get(aiec), get(relu));
                    let epochs = a.len().max(2) as f64;
                    let lo = a.iter().chain(b).copied().fold(f64::INFINITY, f64::min);
                    let hi = a.iter().chain(b).copied().fold(f64::NEG_INFINITY, f64::max);
                    let pad = ((hi - lo) * 0.08).max(1e-6);
                    let mut chart = ChartBuilder::on(&panels[r * METRICS.len() + m])
                        .caption(format!("{task}: {name}"), ("sans-serif", 17))
                        .margin(10)
                        .x_label_area_size(34)
                        .y_label_area_size(56)
                        .build_cartesian_2d(1.0..epochs, (lo - pad).max(0.0)..hi + pad)?;
                    chart
                        .configure_mesh()
                        .x_desc("epoch")
                        .x_label_formatter(&|x| format!("{x:.0}"))
                        .light_line_style(WHITE)
                        .label_style(("sans-serif", 13))
                        .axis_desc_style(("sans-serif", 14))
                        .draw()?;
                    for (values, color, label) in [(a, RED, "AIEC"), (b, BLUE, "ReLU")] {
                        let points = values.iter().enumerate().map(|(i, &v)| ((i + 1) as f64, v));
                        chart
                            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                            .label(label)
                            .legend(move |(x, y)| {
                                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                            });
                    }
                    chart
                        .configure_series_labels()
                        .position(SeriesLabelPosition::MiddleRight)
                        .label_font(("sans-serif", 13))
                        .background_style(WHITE.mix(0.85))
                        .border_style(BLACK)
                        .draw()?;
                }
            }
            root.present()?;
        }
        // Written by the png crate at its best compression (plotters' own
        // encoder, through the image crate, writes files several times larger).
        let mut png = png::Encoder::new(BufWriter::new(std::fs::File::create(path)?), width, height);
        png.set_color(png::ColorType::Rgb);
        png.set_depth(png::BitDepth::Eight);
        png.set_compression(png::Compression::Best);
        png.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
        png.write_header()?.write_image_data(&rgb)?;
        Ok(())
    }
}
