//! crds/ holds exactly what the Rust types generate:
//! `cargo run --bin crdgen > crds/batchrun.yaml`, `cargo run --bin crdgen batchqueue > crds/batchqueue.yaml`.

#[test]
fn crds_directory_matches_the_rust_types() {
    let cases = [
        ("batchrun", batchguard::api::crd_yaml().unwrap()),
        ("batchqueue", batchguard::api::queue_crd_yaml().unwrap()),
    ];
    for (kind, generated) in cases {
        let path = format!("{}/crds/{kind}.yaml", env!("CARGO_MANIFEST_DIR"));
        let committed = std::fs::read_to_string(&path).unwrap();
        assert!(
            generated == committed,
            "crds/{kind}.yaml is stale: run `cargo run --bin crdgen {kind} > crds/{kind}.yaml`"
        );
    }
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
