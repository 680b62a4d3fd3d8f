//! Shared helpers of the integration tests. They run against the local cluster that
//! `tests/cluster/up` starts (or any cluster KUBECONFIG points at) and fail loudly without one.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use batchguard::api::{BatchQueue, BatchRun};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt, ResourceExt};

/// A client for the test cluster, or a panic that says how to get one.
pub async fn client() -> Client {
    if std::env::var_os("KUBECONFIG").is_none() {
        panic!(
            "KUBECONFIG is not set: start the local cluster with `eval \"$(tests/cluster/up)\"` \
             (or point KUBECONFIG at your own cluster) before running the tests"
        );
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::try_default()
        .await
        .expect("a client for the cluster in KUBECONFIG")
}

/// Installs (or updates) the BatchRun and BatchQueue CRDs and waits until they are served.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("batchguard-tests").force();
    for crd in [BatchRun::crd(), BatchQueue::crd()] {
        let name = crd.name_any();
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .expect("CRD applied");
        wait_for(
            &format!("the CRD {name} to be established"),
            Duration::from_secs(30),
            || async {
                let crd = crds.get(&name).await.ok()?;
                let established = crd
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            },
        )
        .await;
    }
    // Discovery of a new resource lags the condition a little.
    let runs: Api<BatchRun> = Api::namespaced(client.clone(), "default");
    let queues: Api<BatchQueue> = Api::namespaced(client.clone(), "default");
    wait_for(
        "BatchRuns and BatchQueues to be listable",
        Duration::from_secs(30),
        || async {
            runs.list(&Default::default()).await.ok()?;
            queues.list(&Default::default()).await.ok().map(|_| ())
        },
    )
    .await;
}

/// A namespace of its own for one test, deleted when dropped, and then gone for good: the
/// drop releases batchguard's finalizers, which no operator will once the test's has stopped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros();
        let name = format!("{prefix}-{}", micros % 100_000_000);
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("namespace created");
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        // The test's client lives on the test's runtime, which this drop blocks: a fresh
        // client on a runtime of its own deletes the namespace (best effort).
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(client) = Client::try_default().await {
                    let namespaces: Api<Namespace> = Api::all(client.clone());
                    let _ = namespaces.delete(&name, &DeleteParams::background()).await;
                    // Nothing new is created in a terminating namespace: the passes end once
                    // what its runs and worker pods held is released.
                    let _ = batchguard::finalizers::release_all(
                        &client,
                        std::slice::from_ref(&name),
                        Duration::from_millis(500),
                    )
                    .await;
                }
            });
        })
        .join()
        .ok();
    }
}

/// The operator binary running as its own process, watching one namespace.
pub struct Operator {
    child: Child,
    pub admin: String,
    pub log: PathBuf,
    namespace: String,
    env: Vec<(String, String)>,
}

impl Operator {
    /// Starts the operator with the test environment (PROMETHEUS_URL from tests/cluster/up
    /// turns the memory guard on) and a one-second guard poll.
    pub fn start(namespace: &str) -> Self {
        Self::start_with_env(namespace, &[])
    }

    /// Starts the operator with extra environment variables.
    pub fn start_with_env(namespace: &str, env: &[(&str, &str)]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::start_on(namespace, port, env)
    }

    fn start_on(namespace: &str, port: u16, env: Vec<(String, String)>) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("operator-logs");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("{namespace}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        // BATCHGUARD_TEST_OPERATOR runs the tests against another build of the operator (an
        // older one, to see a test fail without a fix).
        let binary = std::env::var_os("BATCHGUARD_TEST_OPERATOR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_batchguard")));
        let child = Command::new(binary)
            .args([
                "--namespace",
                namespace,
                "--admin-address",
                &format!("127.0.0.1:{port}"),
            ])
            .env("RUST_LOG", "info,batchguard=debug,kube=warn")
            .env("BATCHGUARD_POLL_INTERVAL_SECONDS", "1")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("the operator binary starts");
        Self {
            child,
            admin: format!("127.0.0.1:{port}"),
            log,
            namespace: namespace.to_string(),
            env,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no graceful shutdown, exactly like a crashed or evicted operator.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.kill();
        let port: u16 = self.admin.rsplit(':').next().unwrap().parse().unwrap();
        *self = Self::start_on(&self.namespace.clone(), port, self.env.clone());
    }

    /// The operator's own metrics text.
    pub async fn metrics(&self) -> String {
        http_get(&self.admin, "/metrics").await.unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A bare HTTP/1.0 GET on loopback, enough for the admin endpoints.
pub async fn http_get(address: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    body.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// Polls `check` until it yields a value, or panics naming what never happened.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A BatchRun of records `[0, end)` in batches of `batch_size`, `parallelism` at a time, whose
/// workers (64Mi request, 128Mi limit) follow the `sim.batchguard.dev/*` `annotations`
/// (YAML map entries); `extra` is more of the spec, indented by two spaces.
pub fn sim_run(
    name: &str,
    end: u64,
    batch_size: u64,
    parallelism: u32,
    annotations: &str,
    extra: &str,
) -> BatchRun {
    batch_run(&format!(
        r#"
apiVersion: batchguard.dev/v1alpha1
kind: BatchRun
metadata:
  name: {name}
spec:
  input:
    range: {{start: 0, end: {end}}}
    batchSize: {batch_size}
  parallelism: {parallelism}
  template:
    metadata:
      annotations: {{{annotations}}}
    spec:
      containers:
        - name: worker
          image: registry.example/etl:2
  resources:
    memory: {{request: 64Mi, limit: 128Mi}}
{extra}
"#
    ))
}

/// A BatchRun manifest from YAML text.
pub fn batch_run(yaml: &str) -> BatchRun {
    serde_yaml::from_str(yaml).expect("a valid BatchRun manifest")
}

/// Runs kubectl (the cluster's own, first on PATH after `tests/cluster/up`).
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl on PATH");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until the run is Succeeded or Failed; on timeout the panic shows its status and the
/// operator's last log lines.
pub async fn wait_finished(
    api: &Api<BatchRun>,
    name: &str,
    timeout: Duration,
    operator: &Operator,
) -> BatchRun {
    use batchguard::api::Phase;
    let deadline = Instant::now() + timeout;
    loop {
        let run = api.get(name).await.expect("run readable");
        if let Some(Phase::Succeeded | Phase::Failed) = run.status.as_ref().and_then(|s| s.phase) {
            return run;
        }
        if Instant::now() > deadline {
            panic!(
                "run {name} did not finish in {timeout:?}; status: {}\noperator log:\n{}",
                serde_json::to_string_pretty(&run.status).unwrap(),
                operator.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// What most operator tests start from: the CRD installed, a namespace of their own and the
/// operator watching it. Fields drop in declaration order, so the operator stops before the
/// namespace goes.
pub struct Setup {
    pub client: Client,
    pub operator: Operator,
    pub ns: TestNamespace,
    pub runs: Api<BatchRun>,
}

impl Setup {
    pub async fn new(prefix: &str) -> Self {
        Self::with_env(prefix, &[]).await
    }

    /// The same with extra environment variables for the operator.
    pub async fn with_env(prefix: &str, env: &[(&str, &str)]) -> Self {
        let client = client().await;
        install_crd(&client).await;
        let ns = TestNamespace::new(&client, prefix).await;
        let operator = Operator::start_with_env(&ns.name, env);
        let runs = Api::namespaced(client.clone(), &ns.name);
        Self {
            client,
            ns,
            operator,
            runs,
        }
    }
}

/// A kubeconfig for a ServiceAccount token: the admin kubeconfig's server and CA, the token.
pub fn service_account_kubeconfig(token: &str, path: &std::path::Path) {
    let admin: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(std::env::var("KUBECONFIG").unwrap()).unwrap(),
    )
    .unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {"server": cluster["server"].as_str().unwrap(),
            "certificate-authority": cluster["certificate-authority"].as_str().unwrap()}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
    });
    std::fs::write(path, serde_yaml::to_string(&config).unwrap()).unwrap();
}

/// The local cluster's real node (kubelet + containerd) and the images imported into it, from
/// the exports of `tests/cluster/up`. Tests that need real containers fail, saying why, when
/// it is missing: they are never skipped silently.
pub struct RealNode {
    pub name: String,
    pub worker_image: String,
    pub rust_worker_image: String,
    pub operator_image: String,
}

impl RealNode {
    pub fn from_env() -> Self {
        let var = |name: &str| match std::env::var(name) {
            Ok(value) if !value.is_empty() => value,
            _ => panic!(
                "{name} is not set: this test needs the local cluster's real node, which \
                 `tests/cluster/up` starts only when run as root on Linux with a non-loopback \
                 address (see tests/cluster/README.md); then `eval \"$(tests/cluster/up)\"`"
            ),
        };
        Self {
            name: var("BATCHGUARD_REAL_NODE"),
            worker_image: var("BATCHGUARD_WORKER_IMAGE"),
            rust_worker_image: var("BATCHGUARD_RUST_WORKER_IMAGE"),
            operator_image: var("BATCHGUARD_OPERATOR_IMAGE"),
        }
    }

    /// The pod-spec lines (nodeSelector and toleration) that put a pod on the real node,
    /// indented by `indent` spaces.
    pub fn placement(&self, indent: usize) -> String {
        let pad = " ".repeat(indent);
        format!(
            "{pad}nodeSelector: {{kubernetes.io/hostname: {name}}}\n\
             {pad}tolerations: [{{key: batchguard.dev/real-node, operator: Exists, effect: NoSchedule}}]",
            name = self.name
        )
    }
}

/// A BatchRun of records `[0, end)` on the real node, the worker running `script` with
/// python3 in the worker image; `extra` is more of the spec, indented by two spaces.
pub fn python_run(
    node: &RealNode,
    name: &str,
    (end, batch_size, parallelism): (u64, u64, u32),
    memory: (&str, &str),
    script: &str,
    extra: &str,
) -> BatchRun {
    let command = serde_json::to_string(&["python3", "-c", script]).unwrap();
    batch_run(&format!(
        r#"
apiVersion: batchguard.dev/v1alpha1
kind: BatchRun
metadata:
  name: {name}
spec:
  input:
    range: {{start: 0, end: {end}}}
    batchSize: {batch_size}
  parallelism: {parallelism}
  template:
    spec:
{placement}
      containers:
        - name: worker
          image: {image}
          imagePullPolicy: Never
          command: {command}
  resources:
    memory: {{request: {request}, limit: {limit}}}
{extra}
"#,
        placement = node.placement(6),
        image = node.worker_image,
        request = memory.0,
        limit = memory.1,
    ))
}

/// Creates a BatchQueue of `memory`, with `max_batches` when given.
pub async fn create_queue(
    client: &Client,
    namespace: &str,
    name: &str,
    memory: &str,
    max_batches: Option<u32>,
) {
    let max_batches = max_batches.map_or(String::new(), |m| format!(", maxBatches: {m}"));
    let queue: BatchQueue = serde_yaml::from_str(&format!(
        "apiVersion: batchguard.dev/v1alpha1\nkind: BatchQueue\nmetadata: {{name: {name}}}\nspec: {{memory: {memory}{max_batches}}}\n"
    ))
    .unwrap();
    Api::<BatchQueue>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &queue)
        .await
        .expect("BatchQueue created");
}

/// A benchmark knob: the environment variable `name` parsed, or `default` when unset or
/// unreadable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn sum_of_offsets(end: u64) -> f64 {
    (0..end).sum::<u64>() as f64
}

/// Waits until a namespace is gone for good (not merely Terminating); the panic names what it
/// still holds.
pub async fn wait_namespace_gone(client: &Client, name: &str, timeout: Duration) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    loop {
        match namespaces.get_opt(name).await {
            Ok(None) => return,
            Ok(Some(ns)) if Instant::now() > deadline => {
                let conditions = ns
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|c| c.status == "True")
                    .map(|c| format!("{}: {}", c.type_, c.message.unwrap_or_default()))
                    .collect::<Vec<_>>();
                panic!("namespace {name} still there after {timeout:?}: {conditions:#?}");
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The notes of the namespace's Events with this reason.
pub async fn event_notes(client: &Client, namespace: &str, reason: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), namespace);
    let list = events
        .list(&kube::api::ListParams::default())
        .await
        .unwrap();
    list.iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.message.clone())
        .collect()
}
