//! crds/ holds exactly what the Rust types generate (run `cargo run --bin crdgen > crds/batchrun.yaml`).

#[test]
fn crds_directory_matches_the_rust_types() {
    let generated = batchguard::api::crd_yaml().unwrap();
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/batchrun.yaml"))
            .unwrap();
    assert!(
        generated == committed,
        "crds/batchrun.yaml is stale: run `cargo run --bin crdgen > crds/batchrun.yaml`"
    );
}

#[test]
fn crd_fits_in_the_last_applied_annotation() {
    // Client-side `kubectl apply` stores the object as JSON in a 256 KiB annotation.
    let crd = <batchguard::api::BatchRun as kube::CustomResourceExt>::crd();
    let json = serde_json::to_string(&crd).unwrap();
    assert!(
        json.len() < 200 * 1024,
        "CRD is {} bytes of JSON",
        json.len()
    );
}
