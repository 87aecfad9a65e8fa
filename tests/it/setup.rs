//! `dispatch-relay setup github-app` against the fake GitHub, which plays
//! github.com's "create app" page by redirecting back with a one-time code:
//! end to end in headless Chromium (driven through chromedriver's WebDriver
//! API), and over plain HTTP for the refusals and failures.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::fake_github::{FakeGitHub, TEST_APP_KEY};
use crate::helpers::relay_command;

const CONVERSION: &str = "apps/create-from-manifest";
const CREATE_PAGE: &str = "web/create-app";
/// The app id the fake gives every App it creates.
const FAKE_APP_ID: u64 = 4242;

/// A running `setup github-app` with its output collected line by line.
struct Setup {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    /// The local page as the terminal printed it, like
    /// `http://127.0.0.1:PORT/?key=...`.
    url: String,
    /// The local server's address, like `http://127.0.0.1:PORT/`.
    base: String,
    key_file: PathBuf,
}

impl Setup {
    fn start(github: &FakeGitHub, dir: &Path, extra: &[&str]) -> Setup {
        Setup::spawn(setup_command(github, dir, extra), dir)
    }

    fn spawn(mut command: Command, dir: &Path) -> Setup {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dispatch-relay setup");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stdout);
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            sink.lock().unwrap().push_str(&text);
        });
        let mut setup = Setup {
            child,
            stdout,
            stderr,
            url: String::new(),
            base: String::new(),
            key_file: dir.join("github-app.pem"),
        };
        let line = setup.wait_for_line("Open ", Duration::from_secs(20));
        let url = line
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"));
        setup.url = url.to_owned();
        setup.base = url.split('?').next().unwrap().to_owned();
        setup
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    /// Waits for a line of standard output starting with `prefix`.
    fn wait_for_line(&mut self, prefix: &str, deadline: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self
                .stdout
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.starts_with(prefix))
            {
                return line.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "setup exited ({status}) before printing {prefix:?}:\n{}\n{}",
                    self.stdout(),
                    self.stderr.lock().unwrap()
                );
            }
            assert!(
                start.elapsed() < deadline,
                "setup printed no {prefix:?} line within {deadline:?}:\n{}",
                self.stdout()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to end, then for its output to be read whole.
    fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < deadline,
                "setup did not exit within {deadline:?}:\n{}",
                self.stdout()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The readers finish at end of file, which follows the exit closely.
        while Arc::strong_count(&self.stdout) > 1 || Arc::strong_count(&self.stderr) > 1 {
            assert!(start.elapsed() < deadline + Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(10));
        }
        status
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn setup_command(github: &FakeGitHub, dir: &Path, extra: &[&str]) -> Command {
    let mut command = relay_command();
    command
        .args(["setup", "github-app", "--listen", "127.0.0.1:0"])
        .args(extra)
        .current_dir(dir)
        .env("GITHUB_API_URL", github.url())
        .env("GITHUB_WEB_URL", github.url())
        .env_remove("RELAY_CONFIG")
        .env("RUST_LOG", "warn");
    command
}

/// The state this setup sent, read from the page's form action.
async fn page_state(url: &str) -> (String, String) {
    let page = crate::helpers::get(url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let action = page
        .split("action=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page has a form action")
        .replace("&amp;", "&");
    let state = action
        .split("state=")
        .nth(1)
        .expect("the form action carries state")
        .to_owned();
    (page, state)
}

/// Checks what every successful setup leaves behind.
fn assert_created(setup: &mut Setup, github: &FakeGitHub) {
    // A deadline, not a wait: on a loaded two-core machine, with a browser
    // and the rest of the suite running, stopping the page can take longer
    // than usual.
    let status = setup.wait_exit(Duration::from_secs(60));
    let stdout = setup.stdout();
    assert!(status.success(), "exit {status}:\n{stdout}");

    let created = github.requests_of(CREATE_PAGE);
    assert_eq!(created.len(), 1, "one visit to the create page");
    let manifest = &created[0].body.as_ref().unwrap()["manifest"];
    assert_eq!(manifest["public"], false);
    assert_eq!(
        manifest["default_permissions"],
        json!({"contents": "write", "metadata": "read", "actions": "write"})
    );
    assert_eq!(
        manifest["redirect_url"],
        format!("{}callback", setup.base),
        "GitHub is told to come back to this setup"
    );
    let slug = manifest["name"].as_str().unwrap().to_ascii_lowercase();
    let code = created[0].body.as_ref().unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();

    let conversions = github.requests_of(CONVERSION);
    assert_eq!(conversions.len(), 1, "exactly one code exchange");
    assert_eq!(
        conversions[0].path,
        format!("/app-manifests/{code}/conversions"),
        "the code GitHub handed out is the one exchanged"
    );
    assert_eq!(conversions[0].status, 201);
    assert!(
        conversions[0].header("authorization").is_none(),
        "the exchange needs no credential"
    );
    assert_eq!(github.violations(), Vec::<String>::new());

    let key = std::fs::read_to_string(&setup.key_file).expect("the key file");
    assert_eq!(key, std::fs::read_to_string(TEST_APP_KEY).unwrap());
    let mode = std::fs::metadata(&setup.key_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key is readable by its owner only");

    let block = format!(
        "github:\n  api_url: {}\n  app:\n    id: {FAKE_APP_ID}\n    private_key_file: {}\n",
        github.url(),
        setup.key_file.display()
    );
    assert!(stdout.contains(&block), "no github.app block in:\n{stdout}");
    assert!(stdout.contains("installation_id"), "{stdout}");
    let install = format!("{}/apps/{slug}/installations/new", github.url());
    assert!(stdout.contains(&install), "no install link in:\n{stdout}");
    for secret in ["PRIVATE KEY", "test-client-secret"] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
        assert!(
            !setup.stderr.lock().unwrap().contains(secret),
            "{secret} in the error output"
        );
    }
}

#[tokio::test]
async fn a_wrong_state_is_refused_and_the_right_one_creates_the_app() {
    let github = FakeGitHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::start(&github, dir.path(), &[]);
    let (page, state) = page_state(&setup.url).await;
    assert!(page.contains("Create GitHub App"), "{page}");
    assert_eq!(state.len(), 64, "32 random bytes in hex");

    // A forged callback: its code is never sent to GitHub, and the setup goes on.
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let forged = http
        .get(format!(
            "{}callback?code=stolen&state={}{}",
            setup.base,
            // One hex digit changed, so only the comparison can tell them apart.
            if state.starts_with('0') { '1' } else { '0' },
            &state[1..]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    let text = forged.text().await.unwrap();
    assert!(text.contains("does not belong to this setup"), "{text}");
    let missing = http
        .get(format!("{}callback?code=stolen", setup.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    // A page whose name was made to resolve here (DNS rebinding) is told
    // nothing: neither the state on `/` nor a hearing on `/callback`.
    for path in ["", "callback?code=stolen&state=x"] {
        let rebound = http
            .get(format!("{}{path}", setup.base))
            .header("host", "attacker.example")
            .send()
            .await
            .unwrap();
        assert_eq!(rebound.status(), 421, "{path}");
        let text = rebound.text().await.unwrap();
        assert!(!text.contains(&state), "{path}: {text}");
    }
    // Anyone else who can reach the port (another user of the machine, or
    // the network with `--listen 0.0.0.0`) does not get the page, and so
    // not the state, without the key printed in the terminal.
    let key = setup.url.split("key=").nth(1).unwrap().to_owned();
    assert_eq!(key.len(), 32, "16 random bytes in hex");
    let wrong_key = format!(
        "{}{}",
        if key.starts_with('0') { '1' } else { '0' },
        &key[1..]
    );
    for query in [String::new(), "?key=".into(), format!("?key={wrong_key}")] {
        let keyless = http
            .get(format!("{}{query}", setup.base))
            .send()
            .await
            .unwrap();
        assert_eq!(keyless.status(), 403, "{query}");
        let text = keyless.text().await.unwrap();
        assert!(!text.contains(&state), "{query}: {text}");
        assert!(text.contains("address printed in the terminal"), "{text}");
    }
    assert!(github.requests_of(CONVERSION).is_empty());
    assert!(setup.running(), "a forged callback does not end the setup");

    // What the browser does: post the form to GitHub and follow its redirect.
    let manifest = page
        .split("name=\"manifest\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    let answer = http
        .post(format!("{}/settings/apps/new?state={state}", github.url()))
        .form(&[("manifest", manifest)])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 302);
    let back = answer.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        back.starts_with(&format!("{}callback?code=", setup.base)),
        "{back}"
    );
    let result = http.get(&back).send().await.unwrap();
    assert_eq!(result.status(), 200);
    let text = result.text().await.unwrap();
    assert!(text.contains("GitHub App created"), "{text}");
    assert!(!text.contains("PRIVATE KEY"));

    assert_created(&mut setup, &github);
}

/// Starts a setup and sends its callback `code` with the right state, as
/// GitHub would send the browser back; answers the page's status and text.
async fn callback_with_code(code: &str) -> (FakeGitHub, tempfile::TempDir, Setup, u16, String) {
    let github = FakeGitHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::start(&github, dir.path(), &[]);
    let (_, state) = page_state(&setup.url).await;
    let answer = crate::helpers::get(format!("{}callback?code={code}&state={state}", setup.base))
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let text = answer.text().await.unwrap();
    (github, dir, setup, status, text)
}

#[tokio::test]
async fn an_unknown_code_fails_with_a_clear_page_and_exit_2() {
    let (github, _dir, mut setup, status, text) = callback_with_code("expired").await;
    assert_eq!(status, 502);
    assert!(text.contains("could not be fetched"), "{text}");
    assert!(text.contains("more than an hour old"), "{text}");

    let status = setup.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(2));
    let conversions = github.requests_of(CONVERSION);
    assert_eq!(conversions.len(), 1);
    assert_eq!(conversions[0].path, "/app-manifests/expired/conversions");
    assert_eq!(conversions[0].status, 404);
    assert!(!setup.key_file.exists(), "no key without an App");
    let stderr = setup.stderr.lock().unwrap().clone();
    assert!(stderr.contains("more than an hour old"), "{stderr}");
    assert_eq!(github.violations(), Vec::<String>::new());
}

/// A code GitHub never gives (changed on its way back) is not sent to
/// GitHub, and the page does not claim GitHub answered anything.
#[tokio::test]
async fn a_code_that_is_not_one_is_refused_without_asking_github() {
    let (github, _dir, mut setup, status, text) = callback_with_code("abc-def").await;
    assert_eq!(status, 502);
    assert!(text.contains("not one GitHub gives"), "{text}");
    assert!(text.contains("Nothing was asked of GitHub"), "{text}");
    assert!(!text.contains("(404)"), "{text}");
    assert_eq!(setup.wait_exit(Duration::from_secs(20)).code(), Some(2));
    assert!(github.requests_of(CONVERSION).is_empty());
    assert!(!setup.key_file.exists());
}

/// `--listen` that names no address is the user's to fix: exit 1, before
/// anything starts.
#[tokio::test]
async fn a_listen_flag_that_is_no_address_exits_1() {
    let github = FakeGitHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    for listen in ["127.0.0.1", "127.0.0.1:99999"] {
        let output = relay_command()
            .args(["setup", "github-app", "--listen", listen])
            .current_dir(dir.path())
            .env("GITHUB_API_URL", github.url())
            .env("GITHUB_WEB_URL", github.url())
            .env_remove("RELAY_CONFIG")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{listen}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("is not an address to listen on"),
            "{stderr}"
        );
    }
    assert!(github.requests().is_empty());
}

#[tokio::test]
async fn an_existing_key_file_is_refused_before_anything_starts() {
    let github = FakeGitHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("github-app.pem"), "keep me").unwrap();
    let output = setup_command(&github, dir.path(), &[]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).is_empty());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("github-app.pem")).unwrap(),
        "keep me"
    );

    let bad_org = setup_command(&github, dir.path(), &["--org", "no/such", "--force"])
        .output()
        .unwrap();
    assert_eq!(bad_org.status.code(), Some(1));
    assert!(github.requests().is_empty());
}

#[tokio::test]
async fn the_create_page_follows_the_organization_and_the_configured_api_url() {
    let github = FakeGitHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::start(&github, dir.path(), &["--org", "acme"]);
    let (_, state) = page_state(&setup.url).await;
    let page = crate::helpers::get(&setup.url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let action = format!(
        "action=\"{}/organizations/acme/settings/apps/new?state={state}\"",
        github.url()
    );
    assert!(page.contains(&action), "{page}");
    assert!(page.contains("the organization <strong>acme</strong>"));
    drop(setup);

    // A GitHub Enterprise Server named in routes.yaml, with nothing in the environment.
    std::fs::write(
        dir.path().join("routes.yaml"),
        "github:\n  api_url: https://ghe.example.com/api/v3\n  token: t\nroutes: []\n",
    )
    .unwrap();
    let mut command = setup_command(&github, dir.path(), &[]);
    command
        .env_remove("GITHUB_API_URL")
        .env_remove("GITHUB_WEB_URL");
    let setup = Setup::spawn(command, dir.path());
    let (page, state) = page_state(&setup.url).await;
    let action = format!("action=\"https://ghe.example.com/settings/apps/new?state={state}\"");
    assert!(page.contains(&action), "{page}");
}

// ---------------------------------------------------------------------------------------------
// Headless Chromium through chromedriver.

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session in it.
struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    base: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session, or returns None
    /// (after saying so loudly) when they are not installed and CI is unset.
    async fn start() -> Option<Browser> {
        if !(Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists()) {
            let message = "chromium and chromium-driver are not installed \
                 (apt-get install chromium chromium-driver)";
            assert!(std::env::var_os("CI").is_none(), "{message}");
            eprintln!("\n!!!!! SKIPPED the browser test: {message} !!!!!\n");
            return None;
        }
        let http = crate::helpers::http();
        let profile = tempfile::tempdir().unwrap();
        // chromedriver needs an explicit port: a free one is taken from the
        // system and released, and another test's server may take it in
        // between. chromedriver then exits at once, and is started again
        // on another port.
        let mut attempts = 0;
        let mut browser = loop {
            attempts += 1;
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let driver = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver");
            let mut browser = Browser {
                driver,
                http: http.clone(),
                session: String::new(),
                base: format!("http://127.0.0.1:{port}"),
                _profile: tempfile::tempdir().unwrap(),
            };
            let start = Instant::now();
            let ready = loop {
                // Bounded: the port may have gone to a server that never
                // answers.
                let answer = browser
                    .http
                    .get(format!("{}/status", browser.base))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .ok();
                if let Some(answer) = answer {
                    let status: Value = answer.json().await.unwrap_or_default();
                    if status["value"]["ready"] == true {
                        break true;
                    }
                }
                if browser.driver.try_wait().ok().flatten().is_some() {
                    break false;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "chromedriver did not become ready"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            if ready {
                break browser;
            }
            assert!(
                attempts < 5,
                "chromedriver exited at start {attempts} times"
            );
        };
        browser._profile = profile;
        let profile = browser._profile.path().display().to_string();
        let created = browser
            .call(
                reqwest::Method::POST,
                "/session",
                json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage", "--window-size=1100,1300",
                        format!("--user-data-dir={profile}"),
                    ],
                }}}}),
            )
            .await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Some(browser)
    }

    /// One WebDriver command; answers the `value`, failing on a WebDriver error.
    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let path = if path.starts_with("/session/") || path == "/session" {
            path.to_owned()
        } else {
            format!("/session/{}{path}", self.session)
        };
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if !body.is_null() {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        let value = answer["value"].clone();
        assert!(
            value.get("error").is_none(),
            "WebDriver {path}: {}",
            value["message"]
        );
        value
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    async fn find(&self, css: &str) -> Option<String> {
        let answer: Value = self
            .http
            .post(format!("{}/session/{}/element", self.base, self.session))
            .json(&json!({"using": "css selector", "value": css}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["value"][ELEMENT_KEY].as_str().map(str::to_owned)
    }

    async fn text(&self, element: &str) -> String {
        let value = self
            .call(
                reqwest::Method::GET,
                &format!("/element/{element}/text"),
                Value::Null,
            )
            .await;
        value.as_str().unwrap_or_default().to_owned()
    }

    async fn screenshot(&self, file: &Path) {
        let value = self
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing the session ends Chromium. Drop cannot await, so the
        // WebDriver DELETE is written by hand on a plain socket.
        if !self.session.is_empty() {
            let addr = self.base.trim_start_matches("http://").to_owned();
            if let Ok(mut stream) = std::net::TcpStream::connect(&addr) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let request = format!(
                    "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
                    self.session
                );
                // chromedriver answers once Chromium has quit; the first bytes of the
                // answer are enough (it may keep the connection open after it).
                if std::io::Write::write_all(&mut stream, request.as_bytes()).is_ok() {
                    let _ = stream.read(&mut [0u8; 512]);
                }
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where screenshots go for a reviewer to look at (not committed).
fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots")
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_end_to_end_in_headless_chromium() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let github = FakeGitHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::start(&github, dir.path(), &[]);

    browser.go(&setup.url).await;
    let button = browser
        .find("#create-app")
        .await
        .expect("the page has the Create GitHub App button");
    assert_eq!(browser.text(&button).await, "Create GitHub App");
    browser
        .screenshot(&screenshot_dir().join("setup-page.png"))
        .await;

    browser
        .call(
            reqwest::Method::POST,
            &format!("/element/{button}/click"),
            json!({}),
        )
        .await;
    let start = Instant::now();
    let result = loop {
        if let Some(result) = browser.find("#result").await {
            break browser.text(&result).await;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the browser never reached the result page; setup printed:\n{}",
            setup.stdout()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(result, "GitHub App created");
    browser
        .screenshot(&screenshot_dir().join("setup-created.png"))
        .await;

    // The browser's visit to the create page carried this setup's state.
    let (_, state) = page_state_from(&github);
    assert_eq!(state.len(), 64);
    assert_created(&mut setup, &github);
}

/// The state the browser sent to the fake's create page.
fn page_state_from(github: &FakeGitHub) -> (String, String) {
    let visits = github.requests_of(CREATE_PAGE);
    assert_eq!(visits.len(), 1);
    let query = visits[0].query.clone().unwrap_or_default();
    let state = visits[0].body.as_ref().unwrap()["state"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(query.contains(&format!("state={state}")), "{query}");
    (query, state)
}
