//! One TLS stack for the whole process: kube and the Prometheus client (reqwest) both use
//! rustls with ring, the provider installed process-wide as the operator does at start, and
//! both build and use an https client. Cargo.lock holds no second crypto provider (aws-lc-rs)
//! and no HTTP/3 stack (quinn), which a default feature of reqwest would bring back.

use batchguard::prometheus::{Prometheus, PrometheusFlags};

#[tokio::test]
async fn kube_and_prometheus_clients_share_one_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();

    let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
    let client = kube::Client::try_from(config).expect("a kube client over https");
    let kube_err = client
        .apiserver_version()
        .await
        .expect_err("nothing listens on port 1");
    assert!(!kube_err.to_string().is_empty());

    let flags = PrometheusFlags {
        prometheus_url: None,
        prometheus_timeout_seconds: 2,
        prometheus_bearer_token_file: None,
        prometheus_ca_file: None,
    };
    let prometheus =
        Prometheus::new("https://127.0.0.1:1", &flags).expect("a Prometheus client over https");
    let err = prometheus
        .pod_values("up")
        .await
        .expect_err("nothing listens on port 1");
    assert!(err.to_string().contains("query failed"), "{err}");
}

#[test]
fn the_lockfile_holds_one_crypto_provider_and_no_http3() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    let packages: Vec<&str> = lock
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .map(|l| l.trim_end_matches('"'))
        .collect();
    assert!(packages.contains(&"ring"));
    for unwanted in ["aws-lc-rs", "aws-lc-sys", "quinn", "h3", "openssl-sys"] {
        assert!(
            !packages.contains(&unwanted),
            "{unwanted} is in Cargo.lock: check the features of kube, reqwest and prometheus-http-query"
        );
    }
}
