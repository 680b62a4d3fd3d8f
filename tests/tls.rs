//! kube (rustls with ring) and the Prometheus client (reqwest's rustls with aws-lc-rs) in one
//! process: with the provider installed as the operator does at start, both build and use an
//! https client without the "Could not automatically determine the process-level
//! CryptoProvider" panic.

use batchguard::guard::prometheus::{Prometheus, PrometheusFlags};

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
