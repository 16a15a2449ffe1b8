//! Where the NVRTC library is found: the search order, its hooks and the
//! candidates it yields. One order serves the crate and the Python package;
//! README.md, section "Diagnostics", documents it for users, and this list
//! must say the same:
//!
//! 1. `AIEC_NVRTC_LIB`, used as given (a path, or a name for the loader);
//! 2. a `libnvrtc.so.*` already loaded in the process (PyTorch loads its own),
//!    read from `/proc/self/maps`;
//! 3. the directories given to [`add_search_dirs`], in that order: each one
//!    itself and its pip layout `nvidia/*/lib` (`nvidia/cu13/lib`,
//!    `nvidia/cuda_nvrtc/lib`); the Python package passes `sys.path` and the
//!    interpreter's site-packages;
//! 4. the CUDA toolkit: `$CUDA_HOME/lib64`, `$CUDA_PATH/lib64`,
//!    `/usr/local/cuda/lib64`;
//! 5. the system loader's path, by soname.
//!
//! Once the CUDA driver's version is known ([`super::set_driver_version`]), a
//! library whose major version is newer than the driver's is passed over at
//! every step but the first, and within a directory the newest acceptable
//! major comes first. The builtins library (`libnvrtc-builtins.so.M.m`) is
//! loaded from the folder of whichever NVRTC is used.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The step of the search order an NVRTC library was found at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// `AIEC_NVRTC_LIB`.
    Env,
    /// Already loaded in the process, by someone else (e.g. PyTorch).
    Loaded,
    /// A directory given to [`add_search_dirs`], or its `nvidia/*/lib`.
    SearchDir,
    /// The CUDA toolkit (`CUDA_HOME`, `CUDA_PATH`, `/usr/local/cuda`).
    Toolkit,
    /// The system loader's search path, by soname.
    LoaderPath,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Env => "AIEC_NVRTC_LIB",
            Origin::Loaded => "already loaded in the process",
            Origin::SearchDir => "a search directory (pip's nvidia packages)",
            Origin::Toolkit => "the CUDA toolkit",
            Origin::LoaderPath => "the loader path",
        })
    }
}

/// One library to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// A path, or a soname for the loader.
    pub name: OsString,
    pub origin: Origin,
    /// The newest NVRTC major this candidate may have once loaded (`None`: any).
    pub max_major: Option<i32>,
}

static SEARCH_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Adds directories to step 3 of the search order, after those added before:
/// each is searched for `libnvrtc.so.*` itself and in its `nvidia/*/lib`
/// subfolders (the layout of NVIDIA's pip packages), so a `site-packages`
/// folder can be passed as it is. Takes effect if called before NVRTC is
/// first loaded (the first compile, [`super::version`], [`super::found`]).
pub fn add_search_dirs<I: IntoIterator<Item = PathBuf>>(dirs: I) {
    let mut d = SEARCH_DIRS.lock().unwrap_or_else(|p| p.into_inner());
    for dir in dirs {
        if !d.contains(&dir) {
            d.push(dir);
        }
    }
}

/// The directories of step 3, as given to [`add_search_dirs`].
pub fn search_dirs() -> Vec<PathBuf> {
    SEARCH_DIRS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The NVRTC major of a library name: `libnvrtc.so.13` is 13, `libnvrtc.so.11.2`
/// 11; `None` for `libnvrtc.so` and for anything that is not NVRTC itself (the
/// builtins, `libnvrtc.alt.so`).
pub(crate) fn soname_major(file_name: &str) -> Option<i32> {
    file_name.strip_prefix("libnvrtc.so.")?.split('.').next()?.parse().ok()
}

/// `dir` and the pip layout below it (`dir/nvidia/*/lib`), the folders that exist.
fn expand(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(dir.join("nvidia")) {
        let mut libs: Vec<PathBuf> =
            entries.flatten().map(|e| e.path().join("lib")).filter(|p| p.is_dir()).collect();
        // `cu13` before `cuda_nvrtc` (CUDA 12): the newer layout first, stably.
        libs.sort();
        out.extend(libs);
    }
    out.retain(|p| p.is_dir());
    out
}

/// The `libnvrtc.so.<major>...` files in `dir`, newest major first, those
/// newer than `driver_major` left out (and named in `notes`).
fn libs_in(dir: &Path, driver_major: Option<i32>, notes: &mut Vec<String>) -> Vec<(PathBuf, i32)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut libs: Vec<(PathBuf, i32)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let major = soname_major(&name)?;
            Some((e.path(), major))
        })
        .collect();
    // Newest major first; for one major, the shortest name (the soname, a
    // symlink to the full version) first.
    libs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.as_os_str().len().cmp(&b.0.as_os_str().len())));
    libs.dedup_by_key(|l| l.1);
    libs.retain(|(p, m)| match driver_major {
        Some(d) if *m > d => {
            notes.push(format!("{}: NVRTC {m} is newer than the CUDA {d} driver can load", p.display()));
            false
        }
        _ => true,
    });
    libs
}

/// The NVRTC libraries mapped into this process (`/proc/self/maps`), in the
/// order they appear; empty where that file does not exist.
pub(crate) fn loaded_in_process() -> Vec<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut out: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path: the path is the 6th field on.
        let Some(path) = line.split_whitespace().nth(5) else { continue };
        let p = PathBuf::from(path);
        let is_nvrtc = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| soname_major(n).is_some());
        if is_nvrtc && !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The toolkit's library folders: `$CUDA_HOME/lib64`, `$CUDA_PATH/lib64`,
/// `/usr/local/cuda/lib64`.
fn toolkit_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(|k| std::env::var_os(k).filter(|v| !v.is_empty()))
        .map(|v| PathBuf::from(v).join("lib64"))
        .collect();
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    dirs.dedup();
    dirs
}

/// The sonames to try on the loader path for a driver of major version
/// `major`, newest first, each with the largest NVRTC major it may have
/// (`None`: any).
pub(crate) fn candidates_for_driver(major: i32) -> Vec<(String, Option<i32>)> {
    let mut v: Vec<(String, Option<i32>)> = (12..=major.max(12))
        .rev()
        .filter(|&m| m <= major)
        .map(|m| (format!("libnvrtc.so.{m}"), None))
        .collect();
    if major >= 11 {
        v.push(("libnvrtc.so.11.2".into(), None));
        v.push(("libnvrtc.so.11.1".into(), None));
    }
    v.push(("libnvrtc.so".into(), Some(major)));
    v
}

/// The sonames tried on the loader path when the driver's version is not
/// known, newest first.
const SONAMES: [&str; 5] =
    ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so.11.1"];

/// Every library to try, in the search order, for a driver of major version
/// `driver_major` (`None`: unknown). `notes` gets what was passed over and
/// which steps found nothing, for the error when nothing loads.
pub(crate) fn candidates(
    explicit: Option<OsString>,
    loaded: &[PathBuf],
    search: &[PathBuf],
    toolkit: &[PathBuf],
    driver_major: Option<i32>,
    notes: &mut Vec<String>,
) -> Vec<Candidate> {
    if let Some(name) = explicit {
        return vec![Candidate { name, origin: Origin::Env, max_major: None }];
    }
    notes.push("AIEC_NVRTC_LIB is not set".into());
    let mut out: Vec<Candidate> = Vec::new();
    if loaded.is_empty() {
        notes.push("no libnvrtc is loaded in the process".into());
    }
    for p in loaded {
        out.push(Candidate { name: p.clone().into(), origin: Origin::Loaded, max_major: driver_major });
    }
    for (origin, dirs) in [(Origin::SearchDir, search), (Origin::Toolkit, toolkit)] {
        let before = out.len();
        for dir in dirs.iter().flat_map(|d| expand(d)) {
            for (path, _) in libs_in(&dir, driver_major, notes) {
                let c = Candidate { name: path.into(), origin, max_major: None };
                if !out.iter().any(|o| o.name == c.name) {
                    out.push(c);
                }
            }
        }
        if out.len() == before {
            let shown: Vec<String> = dirs.iter().take(4).map(|d| d.display().to_string()).collect();
            let more = if dirs.len() > 4 { format!(" and {} more", dirs.len() - 4) } else { String::new() };
            notes.push(match origin {
                Origin::SearchDir if dirs.is_empty() => "no search directories were given".into(),
                _ => format!("no libnvrtc.so.* in {} [{}]{more}", origin, shown.join(", ")),
            });
        }
    }
    let sonames: Vec<(String, Option<i32>)> = match driver_major {
        Some(m) => candidates_for_driver(m),
        None => SONAMES.iter().map(|s| (s.to_string(), None)).collect(),
    };
    out.extend(sonames.into_iter().map(|(n, m)| Candidate {
        name: n.into(),
        origin: Origin::LoaderPath,
        max_major: m,
    }));
    out
}

/// Where `name` was actually loaded from: itself when it is a path, else the
/// file the loader mapped for it (matched by major version), else `name`.
pub(crate) fn real_path(name: &Path, major: i32) -> PathBuf {
    if name.components().count() > 1 {
        return name.to_path_buf();
    }
    loaded_in_process()
        .into_iter()
        .find(|p| p.file_name().and_then(|n| n.to_str()).and_then(soname_major) == Some(major))
        .unwrap_or_else(|| name.to_path_buf())
}

/// The inputs of [`candidates`] read from this process: the environment, the
/// loaded libraries, the search directories and the toolkit.
pub(crate) fn candidates_here(driver_major: Option<i32>, notes: &mut Vec<String>) -> Vec<Candidate> {
    let explicit = std::env::var_os("AIEC_NVRTC_LIB").filter(|v| !v.is_empty());
    candidates(explicit, &loaded_in_process(), &search_dirs(), &toolkit_dirs(), driver_major, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driver_gets_an_nvrtc_of_its_major_version_or_older() {
        let names = candidates_for_driver;
        let c12 = names(12);
        assert_eq!(c12[0], ("libnvrtc.so.12".to_string(), None), "CUDA 12 driver: never .so.13 by soname");
        assert!(c12.iter().all(|(n, _)| n != "libnvrtc.so.13"));
        assert_eq!(c12.last().unwrap(), &("libnvrtc.so".to_string(), Some(12)), "unversioned: only if <= 12");
        let c13 = names(13);
        assert_eq!((c13[0].0.as_str(), c13[1].0.as_str()), ("libnvrtc.so.13", "libnvrtc.so.12"));
    }

    #[test]
    fn sonames_parse_to_their_major() {
        assert_eq!(soname_major("libnvrtc.so.13"), Some(13));
        assert_eq!(soname_major("libnvrtc.so.12.9.86"), Some(12));
        assert_eq!(soname_major("libnvrtc.so.11.2"), Some(11));
        assert_eq!(soname_major("libnvrtc.so"), None);
        assert_eq!(soname_major("libnvrtc-builtins.so.13.0"), None);
        assert_eq!(soname_major("libnvrtc.alt.so.13"), None);
    }

    /// A fake site-packages with both pip layouts, and a toolkit folder.
    fn fake_tree(tag: &str) -> (PathBuf, PathBuf) {
        let root = std::env::temp_dir().join(format!("aiec-nvrtc-search-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let site = root.join("site-packages");
        let toolkit = root.join("cuda/lib64");
        for (dir, files) in [
            (
                site.join("nvidia/cu13/lib"),
                &["libnvrtc.so.13", "libnvrtc-builtins.so.13.0", "libcudart.so.13"][..],
            ),
            (site.join("nvidia/cuda_nvrtc/lib"), &["libnvrtc.so.12", "libnvrtc-builtins.so.12.9"][..]),
            (site.join("nvidia/cudnn/lib"), &["libcudnn.so.9"][..]),
            (toolkit.clone(), &["libnvrtc.so", "libnvrtc.so.12", "libnvrtc.so.12.4.127"][..]),
        ] {
            std::fs::create_dir_all(&dir).unwrap();
            for f in files {
                std::fs::write(dir.join(f), b"").unwrap();
            }
        }
        (site, toolkit)
    }

    fn names(c: &[Candidate]) -> Vec<(String, Origin, Option<i32>)> {
        c.iter().map(|c| (PathBuf::from(&c.name).display().to_string(), c.origin, c.max_major)).collect()
    }

    #[test]
    fn the_search_order_is_env_loaded_dirs_toolkit_loader() {
        let (site, toolkit) = fake_tree("order");
        let s = |p: PathBuf| p.display().to_string();
        let mut notes = Vec::new();
        let loaded = [PathBuf::from("/opt/torch/libnvrtc.so.13")];
        let c = candidates(
            None,
            &loaded,
            std::slice::from_ref(&site),
            std::slice::from_ref(&toolkit),
            None,
            &mut notes,
        );
        let got = names(&c);
        let want_head = [
            ("/opt/torch/libnvrtc.so.13".to_string(), Origin::Loaded, None),
            (s(site.join("nvidia/cu13/lib/libnvrtc.so.13")), Origin::SearchDir, None),
            (s(site.join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12")), Origin::SearchDir, None),
            (s(toolkit.join("libnvrtc.so.12")), Origin::Toolkit, None),
        ];
        assert_eq!(got[..4], want_head[..], "{got:#?}");
        assert!(got[4..].iter().all(|(_, o, _)| *o == Origin::LoaderPath));
        assert_eq!(got[4].0, "libnvrtc.so");

        // AIEC_NVRTC_LIB: that alone.
        let c = candidates(
            Some("/x/libnvrtc.so.12".into()),
            &loaded,
            std::slice::from_ref(&site),
            &[],
            None,
            &mut notes,
        );
        assert_eq!(names(&c), vec![("/x/libnvrtc.so.12".to_string(), Origin::Env, None)]);
        let _ = std::fs::remove_dir_all(site.parent().unwrap());
    }

    #[test]
    fn a_cuda_12_driver_passes_over_nvrtc_13_in_every_step() {
        let (site, toolkit) = fake_tree("driver12");
        let mut notes = Vec::new();
        let loaded = [PathBuf::from("/opt/torch/libnvrtc.so.13")];
        let c = candidates(None, &loaded, std::slice::from_ref(&site), &[toolkit], Some(12), &mut notes);
        let got = names(&c);
        assert_eq!(
            got[0],
            ("/opt/torch/libnvrtc.so.13".to_string(), Origin::Loaded, Some(12)),
            "checked once loaded"
        );
        assert_eq!(got[1].0, site.join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12").display().to_string());
        assert!(!got.iter().any(|(n, o, _)| n.ends_with(".so.13") && *o != Origin::Loaded), "{got:#?}");
        assert!(
            notes.iter().any(|n| n.contains("cu13") && n.contains("newer than the CUDA 12 driver")),
            "{notes:?}"
        );
        let _ = std::fs::remove_dir_all(site.parent().unwrap());
    }

    #[test]
    fn an_empty_search_says_where_it_looked() {
        let mut notes = Vec::new();
        let nowhere = PathBuf::from("/nonexistent/aiec");
        let c = candidates(
            None,
            &[],
            std::slice::from_ref(&nowhere),
            std::slice::from_ref(&nowhere),
            None,
            &mut notes,
        );
        assert!(c.iter().all(|c| c.origin == Origin::LoaderPath));
        let all = notes.join("; ");
        for want in ["AIEC_NVRTC_LIB is not set", "no libnvrtc is loaded", "search directory", "CUDA toolkit"]
        {
            assert!(all.contains(want), "{want:?} not in {all:?}");
        }
    }
}
