//! The local web page of `dispatch-relay setup github-app`: a one-page site
//! with the "Create GitHub App" button and the callback GitHub redirects the
//! browser to. It lives in `ingress` because this module owns actix-web.
//!
//! The page never calls GitHub itself. A callback whose `state` matches is
//! handed over, with its one-time code, to whoever started the server (the
//! `setup` command), which exchanges the code and answers with an
//! [`Outcome`] that the page then shows. The secret checks and the HTML are
//! pure functions, unit-tested below.

use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, CacheControl, CacheDirective};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};

/// How long a stop waits for the result page to reach the browser.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long past [`SHUTDOWN_TIMEOUT`] a stop may take before the page is
/// dropped without waiting further.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What the start page shows and what its form sends.
#[derive(Debug, Clone)]
pub struct Page {
    /// Where the form posts: GitHub's "create app" page, with `state`.
    pub form_action: String,
    /// The manifest, as the JSON text the form sends.
    pub manifest: String,
    /// The App's proposed name.
    pub app_name: String,
    /// The GitHub web address the App is created on.
    pub github: String,
    /// The organization that will own the App, or `None` for the user.
    pub org: Option<String>,
    /// Where the private key will be written.
    pub key_file: String,
    /// The permissions asked for: name, level, what for.
    pub permissions: Vec<(String, String, String)>,
}

/// What became of the code, as the result page tells it.
#[derive(Debug, Clone)]
pub enum Outcome {
    Created {
        app_name: String,
        app_id: u64,
        key_file: String,
        install_url: String,
        config_block: String,
    },
    Failed {
        title: String,
        detail: String,
    },
}

/// A callback with the right `state`: the code, and where to send the result.
#[derive(Debug)]
pub struct Callback {
    pub code: String,
    pub reply: oneshot::Sender<Outcome>,
}

/// A bound listener for the setup page, not yet serving.
pub struct SetupListener {
    listener: TcpListener,
}

impl SetupListener {
    /// Binds `addr` (port 0 picks a free port).
    pub fn bind(addr: &str) -> std::io::Result<SetupListener> {
        Ok(SetupListener {
            listener: TcpListener::bind(addr)?,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Starts serving `page` to requests for `/?key=` followed by
    /// `page_key`; callbacks carrying `state` arrive on the returned
    /// receiver, at most one of them. `hosts` are the `Host` values the
    /// browser may use (the page's address, and the local machine's names on
    /// its port).
    pub fn start(
        self,
        page: Page,
        state: String,
        page_key: String,
        hosts: Vec<String>,
    ) -> std::io::Result<(SetupServer, mpsc::Receiver<Callback>)> {
        let (sender, receiver) = mpsc::channel(1);
        let shared = web::Data::new(Shared {
            page,
            state,
            page_key,
            hosts,
            sender: Mutex::new(Some(sender)),
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .route("/", web::get().to(start_page))
                .route("/callback", web::get().to(callback))
                .default_service(web::to(not_found))
        })
        .workers(1)
        // Every answer closes its connection, so that the stop after the
        // result page waits only for that page, not for a browser's idle
        // keep-alive connections.
        .keep_alive(actix_web::http::KeepAlive::Disabled)
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_TIMEOUT.as_secs())
        .listen(self.listener)?
        .run();
        let handle = server.handle();
        let task = tokio::spawn(server);
        Ok((SetupServer { handle, task }, receiver))
    }
}

/// The running setup page.
pub struct SetupServer {
    handle: ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl SetupServer {
    /// Stops accepting, lets the page being answered reach the browser, and
    /// waits for the server to end, for a bounded time: the setup's result
    /// is known by then, and the terminal must get it even if a browser
    /// connection keeps the server from winding down.
    pub async fn stop(self) {
        let SetupServer { handle, mut task } = self;
        let stopped = async {
            handle.stop(true).await;
            // The server's own result only says whether it stopped cleanly,
            // which no longer matters once the setup is over.
            let _ = (&mut task).await;
        };
        if tokio::time::timeout(SHUTDOWN_TIMEOUT + STOP_GRACE, stopped)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

struct Shared {
    page: Page,
    state: String,
    /// The key of the page's address as the terminal printed it. The page
    /// holds `state`, so whoever opens it can finish the setup: anyone else
    /// who can reach the port (another user of the machine, or the network
    /// with `--listen 0.0.0.0`) must not.
    page_key: String,
    /// The `Host` values a request may carry. Any other is refused: a web
    /// page whose name is made to resolve to this machine (DNS rebinding)
    /// could otherwise read the `state` from `/` and send a code of its own
    /// choosing to `/callback`.
    hosts: Vec<String>,
    /// Taken by the first callback with the right state: the code is used once.
    sender: Mutex<Option<mpsc::Sender<Callback>>>,
}

/// Whether `received` is the secret `expected` (the `state` GitHub echoes
/// back, the page's key), in constant time so that a forged request learns
/// nothing from the timing.
fn secret_matches(expected: &str, received: &str) -> bool {
    expected.len() == received.len() && bool::from(expected.as_bytes().ct_eq(received.as_bytes()))
}

#[derive(serde::Deserialize)]
struct PageQuery {
    key: Option<String>,
}

async fn start_page(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    if let Some(refused) = foreign_host(&req, &shared) {
        return refused;
    }
    let key = web::Query::<PageQuery>::from_query(req.query_string())
        .ok()
        .and_then(|query| query.into_inner().key);
    if !key.is_some_and(|key| secret_matches(&shared.page_key, &key)) {
        tracing::warn!("setup: refused to show the page to a request without its key");
        return failure(
            StatusCode::FORBIDDEN,
            "Open the address the command printed",
            "The setup page opens only at the address printed in the terminal, key included.",
        );
    }
    html(StatusCode::OK, render_start(&shared.page))
}

/// The answer to a request whose `Host` is not one of this page's names.
fn foreign_host(req: &HttpRequest, shared: &Shared) -> Option<HttpResponse> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if shared
        .hosts
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(host))
    {
        return None;
    }
    Some(failure(
        StatusCode::MISDIRECTED_REQUEST,
        "Wrong address",
        "Open the setup page at the address the command printed.",
    ))
}

#[derive(serde::Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
}

async fn callback(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    if let Some(refused) = foreign_host(&req, &shared) {
        return refused;
    }
    let query = web::Query::<CallbackQuery>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or(CallbackQuery {
            code: None,
            state: None,
        });
    let state_ok = query
        .state
        .as_deref()
        .is_some_and(|state| secret_matches(&shared.state, state));
    if !state_ok {
        tracing::warn!("setup: refused a callback whose state does not match this setup");
        return failure(
            StatusCode::BAD_REQUEST,
            "This link does not belong to this setup",
            "The callback's state does not match the one this setup sent to GitHub, so its code \
             was not used. Start again from the setup page.",
        );
    }
    let Some(code) = query.code.filter(|c| !c.is_empty()) else {
        return failure(
            StatusCode::BAD_REQUEST,
            "GitHub sent no code",
            "The callback has no code to exchange. Start again from the setup page.",
        );
    };
    let sender = shared
        .sender
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let Some(sender) = sender else {
        return failure(
            StatusCode::CONFLICT,
            "This setup is already finished",
            "A code was already received; see the terminal for the result.",
        );
    };
    let (reply, result) = oneshot::channel();
    if sender.send(Callback { code, reply }).await.is_err() {
        return failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "The setup has stopped",
            "The setup command is no longer waiting. Run it again.",
        );
    }
    match result.await {
        Ok(outcome @ Outcome::Created { .. }) => html(StatusCode::OK, render_outcome(&outcome)),
        Ok(outcome @ Outcome::Failed { .. }) => {
            html(StatusCode::BAD_GATEWAY, render_outcome(&outcome))
        }
        Err(_) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The setup stopped before it finished",
            "See the terminal for what happened.",
        ),
    }
}

async fn not_found() -> HttpResponse {
    failure(
        StatusCode::NOT_FOUND,
        "Not found",
        "This server only serves the setup page.",
    )
}

fn failure(status: StatusCode, title: &str, detail: &str) -> HttpResponse {
    html(
        status,
        render_outcome(&Outcome::Failed {
            title: title.to_owned(),
            detail: detail.to_owned(),
        }),
    )
}

fn html(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(CacheControl(vec![CacheDirective::NoStore]))
        // The page loads nothing from anywhere; the form may only go to GitHub.
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action http: https:; base-uri 'none'; frame-ancestors 'none'",
        ))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(body)
}

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
:root { color-scheme: light dark; --bg: #f6f8fa; --card: #ffffff; --text: #1f2328; --muted: #59636e;
  --border: #d1d9e0; --accent: #1f883d; --accent-hover: #1a7f37; --code: #eff2f5; --bad: #cf222e;
  --link: #0969da; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #0d1117; --card: #151b23; --text: #e6edf3; --muted: #9198a1; --border: #3d444d;
    --accent: #238636; --accent-hover: #2ea043; --code: #212830; --bad: #f85149; --link: #4493f8; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text);
  font: 16px/1.55 -apple-system, BlinkMacSystemFont, "Segoe UI", "Noto Sans", Helvetica, Arial, sans-serif; }
main { max-width: 44rem; margin: 3rem auto; padding: 0 1rem; }
.card { background: var(--card); border: 1px solid var(--border); border-radius: 12px; padding: 2rem 2.25rem; }
.brand { font-size: .85rem; letter-spacing: .06em; text-transform: uppercase; color: var(--muted); margin: 0 0 .25rem; }
h1 { font-size: 1.6rem; line-height: 1.25; margin: 0 0 1rem; }
h2 { font-size: 1.05rem; margin: 1.75rem 0 .5rem; }
p, li { color: var(--text); }
a { color: var(--link); }
.muted { color: var(--muted); font-size: .92rem; }
ol { padding-left: 1.3rem; } li { margin: .35rem 0; }
table { border-collapse: collapse; width: 100%; font-size: .95rem; }
th, td { text-align: left; padding: .5rem .6rem; border-bottom: 1px solid var(--border); vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: .8rem; text-transform: uppercase; letter-spacing: .04em; }
code, pre { font-family: ui-monospace, SFMono-Regular, "SF Mono", Menlo, Consolas, monospace; font-size: .88em;
  background: var(--code); border-radius: 6px; }
code { padding: .1em .35em; }
pre { padding: .9rem 1rem; overflow-x: auto; line-height: 1.45; }
.badge { display: inline-block; font-size: .78rem; font-weight: 600; padding: .1rem .5rem; border-radius: 999px;
  border: 1px solid var(--border); white-space: nowrap; }
.actions { margin-top: 2rem; display: flex; gap: 1rem; align-items: center; flex-wrap: wrap; }
.button { display: inline-block; appearance: none; border: 1px solid rgba(31,35,40,.15); border-radius: 8px;
  background: var(--accent); color: #ffffff; font: inherit; font-weight: 600; padding: .7rem 1.3rem;
  cursor: pointer; text-decoration: none; }
.button:hover { background: var(--accent-hover); }
.button:focus-visible { outline: 3px solid #0969da; outline-offset: 2px; }
.status-ok { color: var(--accent); } .status-bad { color: var(--bad); }
"#;

fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} · dispatch-relay</title>\n<style>{STYLE}</style>\n</head>\n\
         <body>\n<main>\n<div class=\"card\">\n<p class=\"brand\">dispatch-relay setup</p>\n{body}</div>\n</main>\n</body>\n</html>\n",
        title = escape(title),
    )
}

/// The start page: what will happen, what is asked for, and the button.
fn render_start(page: &Page) -> String {
    let owner = match &page.org {
        Some(org) => format!("the organization <strong>{}</strong>", escape(org)),
        None => "your personal account".to_owned(),
    };
    let rows: String = page
        .permissions
        .iter()
        .map(|(name, level, why)| {
            let level = match level.as_str() {
                "write" => "Read and write",
                "read" => "Read-only",
                other => other,
            };
            format!(
                "<tr><td>{}</td><td><span class=\"badge\">{}</span></td><td>{}</td></tr>\n",
                escape(&capitalize(name)),
                escape(level),
                escape(why)
            )
        })
        .collect();
    let body = format!(
        r#"<h1>Create the GitHub App for dispatch-relay</h1>
<p>The relay sends dispatch events to your repositories as a GitHub App: tokens are minted for
each repository as they are needed and expire within the hour, so there is nothing to rotate.
This page creates that App on <a href="{github}">{github_text}</a>, owned by {owner}.</p>

<h2>What happens</h2>
<ol>
<li>The button opens GitHub with the App's settings filled in. Check the name
(<code>{name}</code>) and confirm with <strong>Create GitHub App</strong>.</li>
<li>GitHub sends you back here, and the relay exchanges the one-time code for the App's id
and private key.</li>
<li>The private key is written to <code>{key_file}</code>, readable only by you. The terminal
then shows the <code>github.app</code> block for <code>routes.yaml</code> and the link to
install the App on your repositories.</li>
</ol>

<h2>Repository permissions requested</h2>
<table>
<thead><tr><th scope="col">Permission</th><th scope="col">Access</th><th scope="col">Why</th></tr></thead>
<tbody>
{rows}</tbody>
</table>
<p class="muted">The App is private (only its owner can install it), has no webhook and
subscribes to no events. It can reach only the repositories you install it on.</p>

<form method="post" action="{action}">
<input type="hidden" name="manifest" value="{manifest}">
<div class="actions">
<button type="submit" class="button" id="create-app">Create GitHub App</button>
<span class="muted">Nothing is sent to GitHub before you press the button.</span>
</div>
</form>
"#,
        github = escape(&page.github),
        github_text = escape(
            page.github
                .trim_start_matches("https://")
                .trim_start_matches("http://")
        ),
        owner = owner,
        name = escape(&page.app_name),
        key_file = escape(&page.key_file),
        rows = rows,
        action = escape(&page.form_action),
        manifest = escape(&page.manifest),
    );
    document("Create the GitHub App", &body)
}

/// The result page after the callback.
fn render_outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Created {
            app_name,
            app_id,
            key_file,
            install_url,
            config_block,
        } => {
            let body = format!(
                r#"<h1 class="status-ok" id="result">GitHub App created</h1>
<p><strong>{name}</strong> (App id <code>{id}</code>) exists, and its private key is in
<code>{key_file}</code>.</p>

<h2>1. Install it on your repositories</h2>
<p>Choose <strong>Only select repositories</strong> and pick the ones the relay dispatches to.</p>
<div class="actions"><a class="button" href="{install}">Install the App</a></div>

<h2>2. Add it to routes.yaml</h2>
<p>The same block is printed in the terminal.</p>
<pre><code>{block}</code></pre>
<p class="muted">You can close this page; the setup command has finished.</p>
"#,
                name = escape(app_name),
                id = app_id,
                key_file = escape(key_file),
                install = escape(install_url),
                block = escape(config_block),
            );
            document("GitHub App created", &body)
        }
        Outcome::Failed { title, detail } => {
            let body = format!(
                "<h1 class=\"status-bad\" id=\"result\">{}</h1>\n<p>{}</p>\n",
                escape(title),
                escape(detail)
            );
            document(title, &body)
        }
    }
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_secret_matches() {
        assert!(secret_matches("a1b2c3", "a1b2c3"));
        assert!(!secret_matches("a1b2c3", "a1b2c4"));
        assert!(!secret_matches("a1b2c3", "a1b2c"));
        assert!(!secret_matches("a1b2c3", "a1b2c33"));
        assert!(!secret_matches("a1b2c3", ""));
    }

    fn page() -> Page {
        Page {
            form_action: "https://github.com/settings/apps/new?state=s&x=1".into(),
            manifest: r#"{"name":"a<b","url":"https://x"}"#.into(),
            app_name: "dispatch-relay-x".into(),
            github: "https://github.com".into(),
            org: Some("acme".into()),
            key_file: "/home/u/github-app.pem".into(),
            permissions: vec![("contents".into(), "write".into(), "dispatch".into())],
        }
    }

    #[test]
    fn the_start_page_escapes_the_manifest_and_posts_to_github() {
        let html = render_start(&page());
        assert!(html.contains(
            r#"<form method="post" action="https://github.com/settings/apps/new?state=s&amp;x=1">"#
        ));
        assert!(html.contains(
            r#"name="manifest" value="{&quot;name&quot;:&quot;a&lt;b&quot;,&quot;url&quot;:&quot;https://x&quot;}""#
        ));
        assert!(html.contains("the organization <strong>acme</strong>"));
        assert!(html.contains("<code>/home/u/github-app.pem</code>"));
        assert!(html.contains("<td>Contents</td><td><span class=\"badge\">Read and write</span>"));
        assert!(html.contains(r#"<button type="submit""#));
        // No external assets: the page works offline and leaks nothing.
        assert!(!html.contains("<script"));
        assert!(!html.contains("<link"));
        assert!(!html.contains("src="));
    }

    #[test]
    fn the_result_pages_escape_what_they_show() {
        let created = render_outcome(&Outcome::Created {
            app_name: "relay <x>".into(),
            app_id: 42,
            key_file: "k.pem".into(),
            install_url: "https://github.com/apps/relay/installations/new".into(),
            config_block: "github:\n  app:\n    id: 42\n".into(),
        });
        assert!(created.contains("relay &lt;x&gt;"));
        assert!(created.contains("href=\"https://github.com/apps/relay/installations/new\""));
        assert!(created.contains("id: 42"));
        let failed = render_outcome(&Outcome::Failed {
            title: "Bad <code>".into(),
            detail: "d & e".into(),
        });
        assert!(failed.contains("Bad &lt;code&gt;"));
        assert!(failed.contains("d &amp; e"));
    }
}
