//! Build script. For now it only asks Cargo to rebuild when a kernel source
//! changes; the kernel sources get embedded and (with the `sim` feature)
//! compiled for the host in later steps.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
}
