//! Prints a CRD as YAML:
//! `cargo run --bin crdgen > crds/batchrun.yaml` and
//! `cargo run --bin crdgen batchqueue > crds/batchqueue.yaml` (then copy both to the chart).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let yaml = match std::env::args().nth(1).as_deref() {
        None | Some("batchrun") => batchguard::api::crd_yaml()?,
        Some("batchqueue") => batchguard::api::queue_crd_yaml()?,
        Some(other) => return Err(format!("unknown CRD {other}: batchrun or batchqueue").into()),
    };
    print!("{yaml}");
    Ok(())
}
