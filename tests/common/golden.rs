//! Loader for the golden cases (`tests/data/golden/`, a copy of the independent reference set,
//! plus the folder named by `AIEC_GOLDEN_DIR` when it is set). Format: see the
//! README in that folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aiec::Pool;
use safetensors::{Dtype, SafeTensors};

/// One layer of a golden case: inputs and expected outputs.
#[derive(Debug, Clone)]
pub struct GoldenLayer {
    pub x: Vec<f64>,
    pub w: Vec<f64>,
    pub act_in: Vec<i64>,
    pub inh_in: Vec<i64>,
    pub total_in: Vec<i64>,
    pub dy: Vec<f64>,
    pub y: Vec<f64>,
    pub v: Vec<f64>,
    pub logits: Vec<f64>,
    pub mask: Vec<u8>,
    pub act: Vec<i64>,
    pub inh: Vec<i64>,
    pub total: Vec<i64>,
    pub gate_sum_sq: f64,
    pub dx: Vec<f64>,
    pub dw: Vec<f64>,
}

/// One golden case.
#[derive(Debug, Clone)]
pub struct GoldenCase {
    pub name: String,
    pub pool: Pool,
    pub tau: f64,
    pub update: bool,
    pub aux_coef: f64,
    pub gate_coef: f64,
    pub classes: usize,
    pub channels: usize,
    pub batch: usize,
    /// Shape of `x` (all layers).
    pub dims: Vec<usize>,
    pub targets: Vec<i64>,
    pub layers: Vec<GoldenLayer>,
    pub aux_loss: f64,
    pub gate_loss: f64,
    pub gate_count: i64,
}

/// The project's copy of the golden cases: under `AIEC_PROJECT_DIR` when
/// set (test binaries carried to another machine), else the crate's folder.
pub fn project_dir() -> PathBuf {
    let root = std::env::var_os("AIEC_PROJECT_DIR").map(PathBuf::from);
    root.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR"))).join("tests/data/golden")
}

/// Every folder the golden runners read, with the label they print: the
/// project's copy, and `AIEC_GOLDEN_DIR` when it is set.
pub fn dirs() -> Vec<(PathBuf, String)> {
    let mut out = vec![(project_dir(), "tests/data/golden".to_string())];
    if let Some(extra) = std::env::var_os("AIEC_GOLDEN_DIR") {
        let p = PathBuf::from(&extra);
        out.push((p.clone(), p.display().to_string()));
    }
    out
}

/// Loads every `*.safetensors` case in `dir`, sorted by file name.
pub fn load_dir(dir: &Path) -> Result<Vec<GoldenCase>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read golden folder {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no *.safetensors cases in {}", dir.display()));
    }
    files.iter().map(|f| load_case(f)).collect()
}

/// Loads one case.
pub fn load_case(path: &Path) -> Result<GoldenCase, String> {
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let err = |e: String| format!("{name}: {e}");
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| err(e.to_string()))?;
    let meta: HashMap<String, String> = meta.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
    let get = |k: &str| meta.get(k).cloned().ok_or_else(|| err(format!("metadata key {k} missing")));
    let num = |k: &str| -> Result<f64, String> { get(k)?.parse().map_err(|e| err(format!("{k}: {e}"))) };
    let int = |k: &str| -> Result<usize, String> { get(k)?.parse().map_err(|e| err(format!("{k}: {e}"))) };
    let pool_name = get("pool")?;
    let pool = Pool::from_name(&pool_name).ok_or_else(|| err(format!("unknown pool {pool_name}")))?;
    let layers_n = int("layers")?;

    let f64s = |k: &str| read_f64(&st, k).map_err(err);
    let i64s = |k: &str| read_i64(&st, k).map_err(err);
    let mut layers = Vec::with_capacity(layers_n);
    let mut dims = Vec::new();
    for l in 0..layers_n {
        let p = |s: &str| format!("l{l}.{s}");
        dims = st.tensor(&p("x")).map_err(|e| err(e.to_string()))?.shape().to_vec();
        let mask = st.tensor(&p("mask")).map_err(|e| err(e.to_string()))?;
        if mask.dtype() != Dtype::U8 {
            return Err(err(format!("{} is {:?}, expected U8", p("mask"), mask.dtype())));
        }
        layers.push(GoldenLayer {
            x: f64s(&p("x"))?,
            w: f64s(&p("w"))?,
            act_in: i64s(&p("act_in"))?,
            inh_in: i64s(&p("inh_in"))?,
            total_in: i64s(&p("total_in"))?,
            dy: f64s(&p("dy"))?,
            y: f64s(&p("y"))?,
            v: f64s(&p("v"))?,
            logits: f64s(&p("logits"))?,
            mask: mask.data().to_vec(),
            act: i64s(&p("act"))?,
            inh: i64s(&p("inh"))?,
            total: i64s(&p("total"))?,
            gate_sum_sq: f64s(&p("gate_sum_sq"))?[0],
            dx: f64s(&p("dx"))?,
            dw: f64s(&p("dw"))?,
        });
    }
    Ok(GoldenCase {
        name: name.clone(),
        pool,
        tau: num("tau")?,
        update: get("update")? == "true",
        aux_coef: num("aux_coef")?,
        gate_coef: num("gate_coef")?,
        classes: int("classes")?,
        channels: int("channels")?,
        batch: int("batch")?,
        dims,
        targets: i64s("targets")?,
        layers,
        aux_loss: f64s("aux_loss")?[0],
        gate_loss: f64s("gate_loss")?[0],
        gate_count: i64s("gate_count")?[0],
    })
}

fn read_f64(st: &SafeTensors, key: &str) -> Result<Vec<f64>, String> {
    let t = st.tensor(key).map_err(|e| format!("{key}: {e}"))?;
    if t.dtype() != Dtype::F64 {
        return Err(format!("{key} is {:?}, expected F64", t.dtype()));
    }
    Ok(t.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).collect())
}

fn read_i64(st: &SafeTensors, key: &str) -> Result<Vec<i64>, String> {
    let t = st.tensor(key).map_err(|e| format!("{key}: {e}"))?;
    if t.dtype() != Dtype::I64 {
        return Err(format!("{key} is {:?}, expected I64", t.dtype()));
    }
    Ok(t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect())
}

/// A case with inputs only (expected values empty), from a random
/// [`aiec::cpu::gradcheck::Case`], for suites that judge one backend by another.
pub fn inputs_only(name: String, case: &aiec::cpu::gradcheck::Case) -> GoldenCase {
    let cfg = case.cfg;
    GoldenCase {
        name,
        pool: cfg.pool(),
        tau: cfg.tau(),
        update: case.update,
        aux_coef: case.coefs.aux_coef,
        gate_coef: case.coefs.gate_coef,
        classes: cfg.classes(),
        channels: cfg.channels(),
        batch: case.targets.len(),
        dims: case.dims.clone(),
        targets: case.targets.clone(),
        layers: case
            .layers
            .iter()
            .map(|l| GoldenLayer {
                x: l.x.clone(),
                w: l.w.clone(),
                act_in: l.counters.act.clone(),
                inh_in: l.counters.inh.clone(),
                total_in: l.counters.total.clone(),
                dy: l.dy.clone(),
                y: vec![],
                v: vec![],
                logits: vec![],
                mask: vec![],
                act: vec![],
                inh: vec![],
                total: vec![],
                gate_sum_sq: 0.0,
                dx: vec![],
                dw: vec![],
            })
            .collect(),
        aux_loss: 0.0,
        gate_loss: 0.0,
        gate_count: 0,
    }
}
