//! `spawn_app()`: runs the built `dispatch-relay` binary on port 0 with a
//! temporary directory (routes.yaml and the SQLite store) and a fake GitHub,
//! and gives tests typed helpers to drive it over real sockets.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use dispatch_relay::config::HmacAlgorithm;
use serde_json::Value;

use crate::fake_github::FakeGitHub;

pub const TOKEN: &str = "ghp_testtoken0123456789abcdefghijklmnopqrstu";
pub const SECRET: &str = "s3cr3t-with-$pecial: chars";

/// The path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_dispatch-relay")
}

/// The usual head of a test routes.yaml: the fake GitHub through the
/// environment, no pacing, fast retries.
pub const TEST_HEAD: &str = r#"
github:
  token: ${GITHUB_TOKEN}
  pacing: off
  timeout: 10s
retry:
  initial_backoff: 10ms
  max_backoff: 50ms
"#;

/// A route verified with HMAC-SHA256 over `X-Signature-256: sha256=<hex>`.
pub fn hmac_route(id: &str, dispatch: &str) -> String {
    format!(
        r#"
  - id: {id}
    verify:
      hmac:
        secret: ${{WEBHOOK_SECRET}}
        header: X-Signature-256
        prefix: "sha256="
    dispatch:
{dispatch}
"#
    )
}

pub struct TestApp {
    pub github: FakeGitHub,
    pub dir: tempfile::TempDir,
    pub base_url: String,
    pub http: reqwest::Client,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
    /// The thread that reads the relay's stderr; it ends with the process.
    log_reader: Option<std::thread::JoinHandle<()>>,
    env: Vec<(String, String)>,
}

impl TestApp {
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("routes.yaml")
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("dispatch-relay.db")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// Posts an unsigned body to a route.
    pub async fn post(&self, route: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/hooks/{route}")))
            .body(body)
            .send()
            .await
            .expect("relay answers")
    }

    /// Posts `body` to `path` (with any query) labelled `content_type`,
    /// for a route that checks no signature.
    pub async fn post_typed(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("relay answers")
    }

    /// Posts a body signed for an HMAC route.
    pub async fn post_signed(&self, route: &str, body: &str) -> reqwest::Response {
        self.post_signed_with(route, body, &[]).await
    }

    pub async fn post_signed_with(
        &self,
        route: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(self.url(&format!("/hooks/{route}")))
            .header("content-type", "application/json")
            .header("x-signature-256", signature(SECRET, body.as_bytes()))
            .body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("relay answers")
    }

    /// Every log line the relay wrote so far (JSON objects). The relay
    /// writes informational lines in batches, a few milliseconds late: to
    /// see one, use [`TestApp::wait_for_log`]; to see them all, use
    /// [`TestApp::stop_and_read_logs`].
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Polls the log until a line satisfies `wanted`, or panics at the
    /// deadline.
    pub async fn wait_for_log(&self, wanted: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self.logs().into_iter().find(|l| wanted(l)) {
                return line;
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!("no such log line: {:#?}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the relay with SIGTERM and returns every line it logged, up to
    /// the last one written at exit.
    pub fn stop_and_read_logs(&mut self) -> Vec<String> {
        self.sigterm();
        let status = self.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "the relay exited with {status}");
        if let Some(reader) = self.log_reader.take() {
            reader.join().unwrap();
        }
        self.logs()
    }

    /// The value of an unlabelled gauge in `/metrics`.
    pub async fn gauge(&self, name: &str) -> f64 {
        sample(&self.metrics().await, name)
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Polls `dispatch-relay deliveries --json` until `accept` holds for the
    /// listed deliveries, or panics at the deadline.
    pub async fn wait_for_deliveries(
        &self,
        deadline: Duration,
        accept: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let list = self.deliveries(&["--limit", "1000"]);
            if accept(&list) {
                return list;
            }
            if start.elapsed() > deadline {
                panic!(
                    "deliveries never reached the expected state: {list:#?}\nrelay log: {:#?}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `dispatch-relay deliveries --json` and returns the list.
    pub fn deliveries(&self, extra: &[&str]) -> Vec<Value> {
        let output = self.cli(&[&["deliveries", "--json"], extra].concat());
        assert!(
            output.status.success(),
            "deliveries failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("deliveries prints JSON")
    }

    /// Runs a CLI command against this app's configuration and store.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut command = relay_command();
        command.args(args).arg("--config").arg(self.config_path());
        for (k, v) in &self.env {
            command.env(k, v);
        }
        command
            .env_remove("RELAY_DATABASE_URL")
            .output()
            .expect("run the CLI")
    }

    /// Starts a CLI command against this app's configuration and store,
    /// and returns its exit status and stderr, or kills it and panics if it
    /// is still running after `deadline` (a second `serve` that should have
    /// been refused).
    pub fn cli_with_deadline(&self, args: &[&str], deadline: Duration) -> (Option<i32>, String) {
        self.cli_with_env_and_deadline(args, &[], deadline)
    }

    /// [`TestApp::cli_with_deadline`] with more environment variables.
    pub fn cli_with_env_and_deadline(
        &self,
        args: &[&str],
        extra_env: &[(&str, &str)],
        deadline: Duration,
    ) -> (Option<i32>, String) {
        let mut command = relay_command();
        command.args(args).arg("--config").arg(self.config_path());
        for (k, v) in &self.env {
            command.env(k, v);
        }
        command.env_remove("RELAY_DATABASE_URL");
        for (k, v) in extra_env {
            command.env(k, v);
        }
        let mut child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run the CLI");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
                    .unwrap();
                return (status.code(), stderr);
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`{}` still running after {deadline:?}", args.join(" "));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Rewrites routes.yaml and waits until the relay has reloaded it.
    pub async fn reload_config(&self, text: &str) {
        self.write_config(text);
        self.wait_for_log(|line| line.contains("Configuration reloaded"))
            .await;
    }

    /// Runs `dispatch-relay redeliver --failed` and checks that it succeeded.
    pub fn redeliver_failed(&self) {
        let output = self.cli(&["redeliver", "--failed"]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Waits until the store holds exactly one delivery, and it has failed.
    pub async fn wait_for_one_failed_delivery(&self) {
        self.wait_for_deliveries(Duration::from_secs(60), |l| {
            l.len() == 1 && finished_failed(&l[0])
        })
        .await;
    }

    /// Rewrites routes.yaml (for redeliver-after-fix stories) by renaming a
    /// complete file into place, so that the relay never reads half of it.
    pub fn write_config(&self, text: &str) {
        let path = self.config_path();
        let partial = path.with_extension("yaml.partial");
        std::fs::write(&partial, text).unwrap();
        std::fs::rename(&partial, &path).unwrap();
    }

    /// Kills the relay with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                panic!("the relay did not exit within {deadline:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the relay again on the same directory and store.
    pub fn restart(&mut self) {
        self.kill9();
        let (child, base_url, logs, log_reader) = start_relay(self.dir.path(), &self.env);
        self.child = Some(child);
        self.base_url = base_url;
        self.logs = logs;
        self.log_reader = Some(log_reader);
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The value of an unlabelled sample in a `/metrics` text, such as a gauge
/// or a histogram's `_count`.
pub fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
}

/// `sha256=<hex>` of the body under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(dispatch_relay::verify::sign(
            HmacAlgorithm::Sha256,
            secret,
            body
        ))
    )
}

/// Starts a relay with `TEST_HEAD` plus the given routes (a YAML list body).
pub async fn spawn_app(routes: &str) -> TestApp {
    spawn_app_with(TEST_HEAD, routes, &[]).await
}

/// Starts a relay with a custom head, routes and extra environment.
pub async fn spawn_app_with(head: &str, routes: &str, extra_env: &[(&str, &str)]) -> TestApp {
    spawn_app_prepared(head, routes, extra_env, |_| {}).await
}

/// Like [`spawn_app_with`], with the fake GitHub prepared by `prepare`
/// before the relay starts (its start-up preflight already talks to GitHub).
pub async fn spawn_app_prepared(
    head: &str,
    routes: &str,
    extra_env: &[(&str, &str)],
    prepare: impl FnOnce(&FakeGitHub),
) -> TestApp {
    let github = FakeGitHub::start().await;
    github.add_token(TOKEN);
    for repo in ["acme/blog", "acme/docs", "acme/site"] {
        github.add_repo(repo);
    }
    prepare(&github);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("routes.yaml"),
        format!("{head}\nroutes:\n{routes}"),
    )
    .unwrap();
    let mut env: Vec<(String, String)> = vec![
        ("GITHUB_TOKEN".into(), TOKEN.into()),
        ("GITHUB_API_URL".into(), github.url()),
        ("WEBHOOK_SECRET".into(), SECRET.into()),
    ];
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let (child, base_url, logs, log_reader) = start_relay(dir.path(), &env);
    TestApp {
        github,
        dir,
        base_url,
        http: http(),
        child: Some(child),
        logs,
        log_reader: Some(log_reader),
        env,
    }
}

pub type Started = (
    Child,
    String,
    Arc<Mutex<Vec<String>>>,
    std::thread::JoinHandle<()>,
);

fn start_relay(dir: &std::path::Path, env: &[(String, String)]) -> Started {
    start_relay_in(dir, &dir.join("routes.yaml"), env, None)
}

/// The settings the relay reads from its environment. A test's relay
/// starts without the caller's: a developer's shell, or a CI runner that
/// sets `GITHUB_API_URL` for its own use, would otherwise change what the
/// test sees. Each test sets what it means.
const RELAY_SETTINGS: &[&str] = &[
    "GITHUB_API_URL",
    "GITHUB_WEB_URL",
    "GITHUB_TOKEN",
    "GITHUB_APP_ID",
    "RELAY_ADMIN_TOKEN",
    "RELAY_CONFIG",
    "RELAY_DATABASE_URL",
    "RELAY_LISTEN",
    "RELAY_LOG_FORMAT",
    "RELAY_TEST_CLOCK_MS",
    "RELAY_TEST_IDLE_POLL_MS",
    "RELAY_TEST_LEASE_MS",
    "RUST_LOG",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    // A proxy in the caller's environment would carry the relay's requests
    // to the fake GitHub, or its fetches of SNS certificates, elsewhere.
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
];

/// A command that runs the relay's binary without the caller's settings
/// (see [`RELAY_SETTINGS`]).
pub fn relay_command() -> Command {
    let mut command = Command::new(binary());
    without_callers_settings(&mut command);
    command
}

fn without_callers_settings(command: &mut Command) {
    for name in RELAY_SETTINGS {
        command.env_remove(name);
    }
}

/// Starts `serve` in `cwd` with `--config config`, which may be relative
/// to it, under a file-size limit in 512-byte blocks (`ulimit -f`) when
/// one is given; answers the process, its base URL, its log lines so far
/// (kept up to date) and the thread that reads them.
pub fn start_relay_in(
    cwd: &std::path::Path,
    config: &std::path::Path,
    env: &[(String, String)],
    file_size_limit_blocks: Option<u64>,
) -> Started {
    let mut command = match file_size_limit_blocks {
        None => relay_command(),
        Some(blocks) => {
            let mut shell = Command::new("sh");
            without_callers_settings(&mut shell);
            shell
                .arg("-c")
                .arg(format!("ulimit -f {blocks}; exec \"$0\" \"$@\""))
                .arg(binary());
            shell
        }
    };
    command
        .current_dir(cwd)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .env("RELAY_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("start the relay");
    let stderr = child.stderr.take().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (addr_tx, addr_rx) = mpsc::channel();
    let sink = logs.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Ok(event) = serde_json::from_str::<Value>(&line)
                && event["message"] == "Listening"
            {
                let _ = addr_tx.send(event["addr"].as_str().unwrap_or_default().to_string());
            }
            sink.lock().unwrap().push(line);
        }
    });
    let addr = match addr_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => addr,
        Err(_) => {
            let _ = child.kill();
            panic!("the relay did not start: {:#?}", logs.lock().unwrap());
        }
    };
    (child, format!("http://{addr}"), logs, reader)
}

/// A stand-in for an alert destination (a Slack incoming webhook or any URL
/// taking a JSON POST): answers 200 and records every body.
pub struct Recorder {
    pub url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    handle: actix_web::dev::ServerHandle,
}

impl Recorder {
    pub fn start() -> Recorder {
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = bodies.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = actix_web::HttpServer::new(move || {
                    let sink = sink.clone();
                    actix_web::App::new().default_service(actix_web::web::to(
                        move |body: actix_web::web::Bytes| {
                            let sink = sink.clone();
                            async move {
                                sink.lock()
                                    .unwrap()
                                    .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                                actix_web::HttpResponse::Ok().body("ok")
                            }
                        },
                    ))
                })
                .workers(1)
                .disable_signals()
                .bind(("127.0.0.1", 0))
                .unwrap();
                let addr = server.addrs()[0];
                let server = server.run();
                tx.send((addr, server.handle())).unwrap();
                let _ = server.await;
            });
        });
        let (addr, handle) = rx.recv().unwrap();
        Recorder {
            url: format!("http://{addr}/services/T000/B000/XXXX"),
            bodies,
            handle,
        }
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }

    /// Polls until at least `n` bodies arrived, or panics at the deadline.
    pub async fn wait_for(&self, n: usize, deadline: Duration) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let bodies = self.bodies();
            if bodies.len() >= n {
                return bodies;
            }
            assert!(
                start.elapsed() < deadline,
                "only {} of {n} alerts arrived: {bodies:?}",
                bodies.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

/// Every file under `dir` (recursively) whose name ends with `.{extension}`.
pub fn files_with_extension(dir: &std::path::Path, extension: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == extension) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The status of an answer and its JSON body (`null` when it has none).
pub async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// Whether a listed delivery failed and has no target still being sent: a
/// fan-out is `failed` as soon as one target is (decision 44), while the
/// others may still be sent.
pub fn finished_failed(delivery: &Value) -> bool {
    delivery["status"] == "failed" && !delivery["finished_at_ms"].is_null()
}

/// A whole routes.yaml: `TEST_HEAD` and one unverified route `id` that
/// dispatches `deploy` to acme/blog.
pub fn plain_routes_file(id: &str) -> String {
    format!(
        "{TEST_HEAD}\nroutes:\n  - id: {id}\n    verify: none\n    dispatch:\n      - repo: acme/blog\n        event_type: deploy\n"
    )
}

/// An HTTP client for the tests' own requests, which go to this machine
/// only: it ignores a proxy the caller's environment names.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a client without custom settings always builds")
}

/// A GET through [`http`], as `reqwest::get` does through the default client.
pub async fn get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http().get(url).send().await
}

/// The environment of a relay started with [`start_relay_in`]: the test
/// token, and the fake GitHub's address, or without one a port where
/// nothing listens.
pub fn relay_env(github: Option<&FakeGitHub>) -> Vec<(String, String)> {
    let api_url = github.map_or_else(closed_port_url, FakeGitHub::url);
    vec![
        ("GITHUB_TOKEN".to_string(), TOKEN.to_string()),
        ("GITHUB_API_URL".to_string(), api_url),
    ]
}

/// The URL of a port on this machine where nothing listens: the system
/// gives a free port, which is let go at once. A relay pointed there is
/// refused at once, and never reaches a real GitHub.
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// A TLS front for a plain-HTTP server at `plain` (`http://127.0.0.1:PORT`),
/// as a GitHub Enterprise Server behind a company's own CA is served: its
/// certificate (for `127.0.0.1`) was issued by `tests/fixtures/tls/ca.pem`,
/// which no system trusts. Returns the `https://` base URL; the front runs
/// until the test's runtime ends.
pub async fn tls_front(plain: &str) -> String {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let certificate = CertificateDer::from_pem_file(fixtures.join("server.pem")).unwrap();
    let key = PrivateKeyDer::from_pem_file(fixtures.join("server.key")).unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![certificate], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let backend = plain.trim_start_matches("http://").to_string();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (acceptor, backend) = (acceptor.clone(), backend.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake;
                // that is what some tests look for.
                let Ok(mut secured) = acceptor.accept(socket).await else {
                    return;
                };
                let mut plain = tokio::net::TcpStream::connect(&backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut secured, &mut plain).await;
            });
        }
    });
    format!("https://127.0.0.1:{port}")
}

/// The CA that issued [`tls_front`]'s certificate, as a PEM file.
pub fn test_ca_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls/ca.pem")
}
