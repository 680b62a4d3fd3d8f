//! Prints the BatchRun CRD as YAML: `cargo run --bin crdgen > crds/batchrun.yaml`.

fn main() -> Result<(), serde_yaml::Error> {
    print!("{}", batchguard::api::crd_yaml()?);
    Ok(())
}
