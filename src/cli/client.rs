//! The cluster connection of the plugin, with the kubectl flags, and errors that say what to do.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::api::BatchRun;

/// What went wrong, in words for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot load the kubeconfig: {0}")]
    Config(String),
    #[error("no BatchRun {run} in namespace {namespace}")]
    UnknownRun { run: String, namespace: String },
    #[error(
        "the BatchRun CRD is not installed in this cluster (install the chart, or kubectl apply -f crds/)"
    )]
    NoCrd,
    #[error(
        "access denied: {0} (kubectl batchguard needs get, list and watch on batchruns.batchguard.dev, and patch for retry)"
    )]
    Forbidden(String),
    #[error("Kubernetes API: {0}")]
    Api(kube::Error),
    #[error("{0}")]
    Other(String),
}

/// A client and the namespace the command works in.
pub struct Target {
    pub client: Client,
    pub namespace: String,
}

impl Target {
    pub async fn connect(
        kubeconfig: Option<&Path>,
        context: Option<&str>,
        namespace: Option<&str>,
    ) -> Result<Self, CliError> {
        let options = KubeConfigOptions {
            context: context.map(str::to_string),
            ..Default::default()
        };
        let config = match kubeconfig {
            Some(path) => {
                let file =
                    Kubeconfig::read_from(path).map_err(|e| CliError::Config(e.to_string()))?;
                Config::from_custom_kubeconfig(file, &options).await
            }
            None => Config::from_kubeconfig(&options).await,
        }
        .map_err(|e| CliError::Config(e.to_string()))?;
        let namespace = namespace
            .map(str::to_string)
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(|e| CliError::Config(e.to_string()))?;
        Ok(Self { client, namespace })
    }

    pub fn runs(&self) -> Api<BatchRun> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// One run, with the errors told apart: no such run, no CRD, no access.
    pub async fn run(&self, name: &str) -> Result<BatchRun, CliError> {
        match self.runs().get(name).await {
            Ok(run) => Ok(run),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                // A missing resource type also answers 404: listing tells the two apart.
                match self.runs().list(&Default::default()).await {
                    Ok(_) => Err(CliError::UnknownRun {
                        run: name.to_string(),
                        namespace: self.namespace.clone(),
                    }),
                    Err(err) => Err(api_error(err)),
                }
            }
            Err(err) => Err(api_error(err)),
        }
    }
}

/// Maps API errors to what they mean for a batchguard user.
pub fn api_error(err: kube::Error) -> CliError {
    match err {
        kube::Error::Api(e) if e.code == 404 => CliError::NoCrd,
        kube::Error::Api(e) if e.code == 403 => CliError::Forbidden(e.message),
        other => CliError::Api(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, message: &str) -> kube::Error {
        let status: kube::core::Status =
            serde_json::from_value(serde_json::json!({"code": code, "message": message})).unwrap();
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn a_missing_resource_type_and_a_refusal_are_told_in_words() {
        // A 404 on listing runs: the resource type itself is not served.
        assert!(matches!(
            api_error(api(404, "the server could not find the requested resource")),
            CliError::NoCrd
        ));
        let forbidden = api_error(api(403, "batchruns.batchguard.dev is forbidden"));
        assert!(
            forbidden
                .to_string()
                .starts_with("access denied: batchruns.batchguard.dev is forbidden")
        );
        assert!(matches!(api_error(api(500, "etcd")), CliError::Api(_)));
    }
}
