//! Device requests: on a machine without the NVIDIA driver or a GPU, asking
//! for CUDA is a typed error that says what is missing (never a panic); the
//! simulator registers every kernel the sources define.

use aiec::{AiecError, Device};

#[test]
fn cuda_request_without_a_gpu_is_a_typed_error() {
    match Device::cuda(0) {
        Ok(dev) => {
            assert!(
                std::env::var_os("AIEC_EXPECT_NO_CUDA").is_none(),
                "AIEC_EXPECT_NO_CUDA set, but {dev:?} opened"
            );
            println!("cuda: {} is present", dev.label());
            // A GPU ordinal past the last is still a typed error.
            let e = Device::cuda(1 << 20).unwrap_err();
            assert!(matches!(e, AiecError::CudaUnavailable { .. }), "{e:?}");
        }
        Err(e) => {
            assert!(std::env::var_os("AIEC_EXPECT_CUDA").is_none(), "AIEC_EXPECT_CUDA is set: {e}");
            let AiecError::CudaUnavailable { reason, hint } = &e else {
                panic!("expected CudaUnavailable, got {e:?}")
            };
            assert!(!reason.is_empty() && hint.contains("driver"), "{e}");
            println!("cuda: unavailable as expected here: {e}");
        }
    }
}

#[cfg(feature = "sim")]
#[test]
fn the_simulator_registers_every_kernel_of_the_sources() {
    let names = aiec::device::sim_kernel_names();
    // AIEC_EXPORT / AIEC_EXPORT_LB lines yield f32, f16 and bf16 entries;
    // AIEC_EXPORT_NAMED lines one entry of exactly that name.
    let mut want = Vec::new();
    for (file, src) in aiec::nvrtc::sources::SOURCES {
        for line in src.lines() {
            let Some((mac, rest)) = line.split_once('(') else { continue };
            let op = rest.split(',').next().unwrap().trim();
            match mac {
                "AIEC_EXPORT" | "AIEC_EXPORT_LB" => {
                    for dt in ["f32", "f16", "bf16"] {
                        want.push((file.to_string(), format!("{op}_{dt}")));
                    }
                }
                "AIEC_EXPORT_NAMED" => want.push((file.to_string(), op.to_string())),
                _ => {}
            }
        }
    }
    assert!(want.len() >= 12, "too few exports found: {want:?}");
    for (file, name) in &want {
        assert!(names.contains(name), "{file}: {name} is not registered in the simulator ({names:?})");
    }
    assert_eq!(names.len(), want.len(), "registered: {names:?}");
}

#[cfg(feature = "sim")]
#[test]
fn simulator_launch_errors_are_typed() {
    use aiec::launch::{KernelArg, LaunchPlan};
    let dev = Device::sim();
    let plan = LaunchPlan {
        module: aiec::nvrtc::Module::all("threshold.cu"),
        kernel: "threshold_fwd_f64".into(),
        grid: [1, 1, 1],
        block: [32, 1, 1],
        shared_bytes: 0,
        args: vec![KernelArg::U64(0)],
    };
    // SAFETY: the kernel does not exist, so nothing is read or written.
    let e = unsafe { dev.launch(&plan) }.unwrap_err();
    assert!(
        matches!(&e, AiecError::Sim { code: 1, message, .. } if message.contains("unknown kernel")),
        "{e:?}"
    );
    let plan = LaunchPlan { kernel: "threshold_fwd_f32".into(), ..plan };
    // SAFETY: the argument count is wrong, so the kernel never runs.
    let e = unsafe { dev.launch(&plan) }.unwrap_err();
    assert!(matches!(&e, AiecError::Sim { code: 2, .. }), "{e:?}");
}
