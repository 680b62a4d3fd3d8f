//! Worker memory from Prometheus: the client (URL, timeout, optional bearer token file read on
//! every request since mounted tokens rotate, CA file) and, in `promql`, the query.
//!
//! A leaf with no project imports: both the guard and `kubectl batchguard watch` read worker
//! memory through it, and the CLI must not depend on the guard's poller.

pub mod promql;

use std::path::PathBuf;
use std::time::Duration;

use prometheus_http_query::Client;
use prometheus_http_query::response::{Data, InstantVector};

use self::promql::PodKey;

/// How to reach Prometheus.
#[derive(Clone, Debug, clap::Args)]
pub struct PrometheusFlags {
    /// Base URL of the Prometheus that scrapes worker memory; without it the guard is off.
    #[arg(long, env = "PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// HTTP timeout of one query.
    #[arg(long, env = "PROMETHEUS_TIMEOUT_SECONDS", default_value_t = 5)]
    pub prometheus_timeout_seconds: u64,
    /// File holding a bearer token, read on every request.
    #[arg(long, env = "PROMETHEUS_BEARER_TOKEN_FILE")]
    pub prometheus_bearer_token_file: Option<PathBuf>,
    /// PEM file of the CA that signs Prometheus's certificate.
    #[arg(long, env = "PROMETHEUS_CA_FILE")]
    pub prometheus_ca_file: Option<PathBuf>,
}

/// Errors talking to Prometheus; they make the guard blind, never act.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error("cannot read {0}: {1}")]
    File(PathBuf, std::io::Error),
    #[error("invalid Prometheus client settings: {0}")]
    Setup(String),
    #[error("query failed: {0}")]
    Query(#[from] prometheus_http_query::Error),
    #[error("unexpected result type (expected an instant vector)")]
    NotAVector,
}

pub struct Prometheus {
    client: Client,
    token_file: Option<PathBuf>,
}

impl Prometheus {
    pub fn new(url: &str, flags: &PrometheusFlags) -> Result<Self, PrometheusError> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(flags.prometheus_timeout_seconds));
        if let Some(ca) = &flags.prometheus_ca_file {
            let pem = std::fs::read(ca).map_err(|e| PrometheusError::File(ca.clone(), e))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| PrometheusError::Setup(e.to_string()))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| PrometheusError::Setup(e.to_string()))?;
        let client = Client::from(http, url).map_err(|e| PrometheusError::Setup(e.to_string()))?;
        Ok(Self {
            client,
            token_file: flags.prometheus_bearer_token_file.clone(),
        })
    }

    /// Runs an instant query and returns each series' value by its `namespace` and `pod`
    /// labels. Sent as a POST form: a query over many workers is long, and in a URL it would
    /// meet proxies' and servers' limits on its length.
    pub async fn pod_values(&self, query: &str) -> Result<Vec<(PodKey, f64)>, PrometheusError> {
        let mut request = self.client.query(query);
        if let Some(file) = &self.token_file {
            let token = std::fs::read_to_string(file)
                .map_err(|e| PrometheusError::File(file.clone(), e))?;
            request = request.header(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", token.trim())
                    .parse::<reqwest::header::HeaderValue>()
                    .map_err(|e| PrometheusError::Setup(e.to_string()))?,
            );
        }
        let response = request.post().await?;
        let Data::Vector(vector) = response.data() else {
            return Err(PrometheusError::NotAVector);
        };
        Ok(keyed(vector))
    }
}

/// Each series' finite value by namespace and pod; a series without both labels is no
/// worker's.
fn keyed(vector: &[InstantVector]) -> Vec<(PodKey, f64)> {
    vector
        .iter()
        .filter_map(|v| {
            let label = |name: &str| v.metric().get(name).map(String::as_str);
            Some((
                PodKey::new(label("namespace")?, label("pod")?),
                v.sample().value(),
            ))
        })
        .filter(|(_, value)| value.is_finite())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_keyed_by_namespace_and_pod() {
        let vector: Vec<InstantVector> = serde_json::from_str(
            r#"[
                {"metric": {"namespace": "a", "pod": "w-1"}, "value": [1700000000, "100"]},
                {"metric": {"namespace": "b", "pod": "w-1"}, "value": [1700000000, "200"]},
                {"metric": {"pod": "w-2"}, "value": [1700000000, "300"]},
                {"metric": {"namespace": "a", "pod": "w-3"}, "value": [1700000000, "NaN"]}
            ]"#,
        )
        .unwrap();
        assert_eq!(
            keyed(&vector),
            vec![
                (PodKey::new("a", "w-1"), 100.0),
                (PodKey::new("b", "w-1"), 200.0)
            ]
        );
    }
}
