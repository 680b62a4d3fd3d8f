//! Requests to the Kubernetes API, counted by one tower layer on the client: every request
//! the operator sends is counted where it leaves, by the verb and resource its method and
//! path name, instead of at each call site.

use std::task::{Context, Poll};

use http::{Method, Request, Uri};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tower::{Layer, Service};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub resource: String,
}

pub struct ApiMetrics {
    pub requests: Family<RequestLabels, Counter>,
}

impl ApiMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::default();
        registry.register(
            "api_requests",
            "Requests the operator sent (watches aside), by verb and resource",
            Family::clone(&requests),
        );
        Self { requests }
    }

    /// The layer that counts a client's requests here.
    pub fn layer(&self) -> CountRequests {
        CountRequests {
            requests: self.requests.clone(),
        }
    }
}

/// A tower layer counting each request into `batchguard_api_requests_total`.
#[derive(Clone)]
pub struct CountRequests {
    requests: Family<RequestLabels, Counter>,
}

impl<S> Layer<S> for CountRequests {
    type Service = CountedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountedService {
            inner,
            requests: self.requests.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CountedService<S> {
    inner: S,
    requests: Family<RequestLabels, Counter>,
}

impl<S, B> Service<Request<B>> for CountedService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // Counted when sent, whatever the answer: the load on the apiserver is the point.
        if let Some(labels) = request_labels(request.method(), request.uri()) {
            self.requests.get_or_create(&labels).inc();
        }
        self.inner.call(request)
    }
}

/// The labels of a request: Kubernetes' verb (`get`, `list`, `create`, `update`, `patch`,
/// `delete`, `deletecollection`) and the resource, with its subresource (`batchruns/status`).
/// `None` for watches and for paths that name no resource (`/version`, discovery).
pub fn request_labels(method: &Method, uri: &Uri) -> Option<RequestLabels> {
    let query = uri.query().unwrap_or_default();
    if query
        .split('&')
        .any(|pair| pair == "watch=true" || pair == "watch=1")
    {
        return None;
    }
    let path = uri.path();
    let rest = if let Some(rest) = path.strip_prefix("/api/") {
        rest.split_once('/')?.1
    } else {
        let rest = path.strip_prefix("/apis/")?;
        rest.splitn(3, '/').nth(2)?
    };
    let mut segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    // `namespaces/{ns}/…` scopes a resource; `namespaces/{ns}` alone is a Namespace.
    if segments.len() > 2 && segments[0] == "namespaces" {
        segments.drain(..2);
    }
    let (resource, named) = match segments.as_slice() {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, subresource, ..] => (format!("{resource}/{subresource}"), true),
        [] => return None,
    };
    let verb = match *method {
        Method::GET if named => "get",
        Method::GET => "list",
        // Events keep the verb they were counted under before this layer existed.
        Method::POST if resource == "events" => "post",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => return None,
    };
    Some(RequestLabels {
        verb: verb.into(),
        resource,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_labelled_by_verb_and_resource_as_the_call_sites_did() {
        let cases = [
            (
                "GET",
                "/apis/batchguard.dev/v1alpha1/namespaces/ns/batchruns/r",
                Some(("get", "batchruns")),
            ),
            (
                "PATCH",
                "/apis/batchguard.dev/v1alpha1/namespaces/ns/batchruns/r/status?",
                Some(("patch", "batchruns/status")),
            ),
            (
                "PATCH",
                "/apis/batchguard.dev/v1alpha1/namespaces/ns/batchqueues/q/status",
                Some(("patch", "batchqueues/status")),
            ),
            (
                "POST",
                "/apis/batch/v1/namespaces/ns/jobs?",
                Some(("create", "jobs")),
            ),
            (
                "DELETE",
                "/apis/batch/v1/namespaces/ns/jobs/j",
                Some(("delete", "jobs")),
            ),
            (
                "DELETE",
                "/apis/batch/v1/namespaces/ns/jobs?labelSelector=a%3Db",
                Some(("deletecollection", "jobs")),
            ),
            (
                "PATCH",
                "/api/v1/namespaces/ns/pods/p",
                Some(("patch", "pods")),
            ),
            (
                "PATCH",
                "/api/v1/namespaces/ns/pods/p/resize",
                Some(("patch", "pods/resize")),
            ),
            (
                "DELETE",
                "/api/v1/namespaces/ns/pods/p",
                Some(("delete", "pods")),
            ),
            (
                "GET",
                "/api/v1/namespaces/ns/events?fieldSelector=reason%3DFailedCreate",
                Some(("list", "events")),
            ),
            (
                "POST",
                "/apis/events.k8s.io/v1/namespaces/ns/events?",
                Some(("post", "events")),
            ),
            (
                "PATCH",
                "/apis/events.k8s.io/v1/namespaces/ns/events/e",
                Some(("patch", "events")),
            ),
            (
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l",
                Some(("update", "leases")),
            ),
            (
                "GET",
                "/apis/batchguard.dev/v1alpha1/batchruns?limit=500",
                Some(("list", "batchruns")),
            ),
            ("GET", "/api/v1/namespaces/ns", Some(("get", "namespaces"))),
            ("GET", "/api/v1/namespaces", Some(("list", "namespaces"))),
            (
                "GET",
                "/api/v1/namespaces/ns/pods?watch=true&labelSelector=x",
                None,
            ),
            (
                "GET",
                "/apis/batch/v1/jobs?allowWatchBookmarks=true&watch=1",
                None,
            ),
            ("GET", "/version", None),
            ("GET", "/apis", None),
        ];
        for (method, uri, expected) in cases {
            let method: Method = method.parse().unwrap();
            let uri: Uri = uri.parse().unwrap();
            let expected = expected.map(|(verb, resource)| RequestLabels {
                verb: verb.into(),
                resource: resource.into(),
            });
            assert_eq!(request_labels(&method, &uri), expected, "{method} {uri}");
        }
    }

    #[tokio::test]
    async fn the_layer_counts_each_request_it_passes_on() {
        let metrics = ApiMetrics::register(&mut Registry::default());
        let mut service = metrics
            .layer()
            .layer(tower::service_fn(|_: Request<()>| async {
                Ok::<_, std::convert::Infallible>(())
            }));
        let request = |uri: &str| Request::get(uri).body(()).unwrap();
        service
            .call(request("/apis/batch/v1/namespaces/ns/jobs/a"))
            .await
            .unwrap();
        service
            .call(request("/apis/batch/v1/namespaces/ns/jobs/b"))
            .await
            .unwrap();
        service
            .call(request("/apis/batch/v1/namespaces/ns/jobs?watch=true"))
            .await
            .unwrap();
        let labels = RequestLabels {
            verb: "get".into(),
            resource: "jobs".into(),
        };
        assert_eq!(metrics.requests.get_or_create(&labels).get(), 2);
        assert_eq!(
            metrics
                .requests
                .get_or_create(&RequestLabels {
                    verb: "list".into(),
                    resource: "jobs".into(),
                })
                .get(),
            0,
            "watches are not counted"
        );
    }
}
