//! Nothing accepted is lost: a `kill -9` in the middle of sending, restarts,
//! and the graceful SIGTERM drain.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;

use crate::fake_github::Scripted;
use crate::helpers::{TEST_HEAD, hmac_route, spawn_app, spawn_app_with};

const TARGET: &str = "      - repo: acme/blog\n        event_type: deploy\n        client_payload:\n          n: \"{{ body.n }}\"\n          delivery: \"{{ delivery.id }}\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_survives_kill_9_in_the_middle_of_sending() {
    let mut app = spawn_app(&hmac_route("cms", TARGET)).await;
    // Slow GitHub down so that the crash lands while requests are in flight:
    // at 64 in flight and three seconds each, the 200 take over nine seconds
    // to arrive, however slowly the test gets to the crash.
    app.github.set_latency(Duration::from_secs(3));
    let mut accepted = HashSet::new();
    let sends = (0..200).map(|n| {
        let body = format!(r#"{{"n":{n}}}"#);
        let app = &app;
        async move {
            let response = app.post_signed("cms", &body).await;
            assert_eq!(response.status(), 202);
            response.json::<Value>().await.unwrap()["delivery_id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    });
    for id in futures_util::future::join_all(sends).await {
        accepted.insert(id);
    }
    assert_eq!(accepted.len(), 200);
    // Crash once some, but not all, have reached GitHub.
    app.github
        .wait_for_dispatches(5, Duration::from_secs(60))
        .await;
    app.kill9();
    let before = app.github.dispatches().len();
    assert!(
        before < 200,
        "the crash should land mid-queue ({before} already sent)"
    );

    // The first start made the store; the restart finds it.
    assert!(
        app.logs()
            .iter()
            .any(|l| l.contains("Created a new, empty store"))
    );
    app.github.set_latency(Duration::ZERO);
    app.restart();
    app.wait_for_log(|l| l.contains("\"Listening\"")).await;
    assert!(
        !app.logs()
            .iter()
            .any(|l| l.contains("Created a new, empty store")),
        "the restart found the store"
    );
    let delivered_ids = |app: &crate::helpers::TestApp| -> HashSet<String> {
        app.github
            .dispatches()
            .iter()
            .map(|r| {
                r.body.as_ref().unwrap()["client_payload"]["delivery"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut delivered = delivered_ids(&app);
    while !accepted.is_subset(&delivered) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        delivered = delivered_ids(&app);
    }
    let missing: Vec<_> = accepted.difference(&delivered).collect();
    let unknown: Vec<_> = delivered.difference(&accepted).collect();
    assert!(
        missing.is_empty(),
        "accepted but never delivered: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "delivered but never accepted: {unknown:?}"
    );
    // At-least-once: a job is sent twice only if the crash fell between
    // GitHub's answer and its record; that is at most the requests in flight.
    let duplicates = app.github.dispatches().len() - 200;
    assert!(duplicates <= 64, "{duplicates} duplicates");
    let list = app
        .wait_for_deliveries(Duration::from_secs(30), |list| {
            list.len() == 200 && list.iter().all(|d| d["status"] == "delivered")
        })
        .await;
    assert_eq!(list.len(), 200);
    // The restart said that dispatches were in flight, and each one GitHub
    // received twice shows the interrupted attempt in its history.
    let said = app
        .logs()
        .into_iter()
        .find(|l| l.contains("The relay last stopped while dispatches were in flight"))
        .expect("the restart says dispatches were interrupted");
    let mut sent_times: std::collections::HashMap<String, usize> = Default::default();
    for request in app.github.dispatches() {
        let id = request.body.as_ref().unwrap()["client_payload"]["delivery"]
            .as_str()
            .unwrap()
            .to_string();
        *sent_times.entry(id).or_default() += 1;
    }
    let attempts_of = |id: &str| -> u64 {
        let delivery = list.iter().find(|d| d["id"] == id).unwrap();
        delivery["targets"][0]["attempts"].as_u64().unwrap()
    };
    assert!(
        sent_times.values().any(|times| *times > 1),
        "the crash fell while dispatches were in flight"
    );
    for (id, times) in &sent_times {
        if *times > 1 {
            assert!(attempts_of(id) >= 2, "{id} was sent twice: {said}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_refuses_new_webhooks_finishes_in_flight_and_exits_0() {
    let mut app = spawn_app(&hmac_route("cms", TARGET)).await;
    // The dispatch is held at GitHub's door until the test has seen the
    // drain's 503s, however slowly it polls.
    let gate = app.github.hold("POST", "/repos/acme/blog/dispatches");
    assert_eq!(app.post_signed("cms", r#"{"n":1}"#).await.status(), 202);
    gate.wait_for_arrivals(1, Duration::from_secs(60)).await;
    app.sigterm();
    // While draining, new webhooks get 503 with Retry-After. The bound
    // stays inside the 20 s the relay gives dispatches in flight.
    let mut refused = None;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        match app.http.post(app.url("/hooks/cms")).body("{}").send().await {
            Ok(response) if response.status() == 503 => {
                refused = Some(response);
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(_) => break,
        }
    }
    gate.open();
    let refused = refused.expect("a webhook during shutdown is answered 503");
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    // A bound, not a wait: the relay's own limits (20 s to drain, 10 s for
    // alerts, 10 s for HTTP) add up to 40 s, and a loaded two-core machine
    // running the rest of the suite can take most of that.
    let status = app.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(
        app.github.dispatches().len(),
        1,
        "the in-flight dispatch finished"
    );
    let list = app.deliveries(&[]);
    assert_eq!(list[0]["status"], "delivered");
}

/// A second SIGTERM stops the relay at once instead of after the grace
/// periods (20 s for dispatches in flight, 10 s for alerts, 10 s for HTTP);
/// the dispatch it was waiting for stays queued for the next start.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_stops_without_waiting_for_the_grace_period() {
    let head = TEST_HEAD.replace("timeout: 10s", "timeout: 120s");
    assert_ne!(head, TEST_HEAD);
    let mut app = spawn_app_with(&head, &hmac_route("cms", TARGET), &[]).await;
    // GitHub holds the dispatch far longer than any grace period.
    app.github.set_latency(Duration::from_secs(100));
    assert_eq!(app.post_signed("cms", r#"{"n":1}"#).await.status(), 202);
    app.github
        .wait_for_a_dispatch_attempt(Duration::from_secs(60))
        .await;
    app.sigterm();
    app.wait_for_log(|l| l.contains("SIGTERM received")).await;
    app.sigterm();
    // Well inside the 20 s the first signal alone waits for the dispatch.
    let status = app.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status {status:?}");
    let list = app.deliveries(&[]);
    assert_eq!(list[0]["status"], "pending", "{list:?}");

    app.github.set_latency(Duration::ZERO);
    app.restart();
    app.wait_for_deliveries(Duration::from_secs(60), |list| {
        list.len() == 1 && list[0]["status"] == "delivered"
    })
    .await;
}

/// SIGTERM does not wait for the queue: jobs not yet started stay queued,
/// and the next start sends each of them once.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_leaves_the_queue_for_the_next_start() {
    let head = TEST_HEAD.replace(
        "pacing: off",
        "pacing: { concurrency: 1, min_interval: 2s, per_minute: 6000 }",
    );
    assert_ne!(head, TEST_HEAD);
    let mut app = spawn_app_with(&head, &hmac_route("cms", TARGET), &[]).await;
    for n in 0..4 {
        let body = format!(r#"{{"n":{n}}}"#);
        assert_eq!(app.post_signed("cms", &body).await.status(), 202);
    }
    app.github
        .wait_for_dispatches(1, Duration::from_secs(60))
        .await;
    app.sigterm();
    let status = app.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "exit status {status:?}");
    // Two seconds apart, the next dispatch was due long after the stop.
    let sent_before_stop = app.github.dispatches().len();
    assert!(sent_before_stop < 4, "the stop sent the queue");
    let pending = app
        .deliveries(&[])
        .iter()
        .filter(|d| d["status"] == "pending")
        .count();
    assert_eq!(pending, 4 - sent_before_stop, "the rest is still queued");

    app.restart();
    app.wait_for_deliveries(Duration::from_secs(60), |list| {
        list.len() == 4 && list.iter().all(|d| d["status"] == "delivered")
    })
    .await;
    let mut sent: Vec<String> = app
        .github
        .dispatches()
        .iter()
        .map(|d| d.body.as_ref().unwrap()["client_payload"].to_string())
        .collect();
    sent.sort();
    sent.dedup();
    assert_eq!(sent.len(), 4, "each sent once");
    assert_eq!(app.github.dispatches().len(), 4, "and no more");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_edit_adds_a_route_and_an_invalid_one_keeps_the_old_routes() {
    let app = spawn_app(&hmac_route("cms", TARGET)).await;
    assert_eq!(app.post("new", "{}").await.status(), 404);
    let original = std::fs::read_to_string(app.config_path()).unwrap();
    let added = format!(
        "{original}\n  - id: new\n    verify: none\n    dispatch:\n      - repo: acme/docs\n        event_type: added\n"
    );
    app.write_config(&added);
    // Requests keep being answered while the file changes; the new route
    // appears without a restart.
    let start = std::time::Instant::now();
    loop {
        let old = app.post_signed("cms", r#"{"n":1}"#).await;
        assert_eq!(
            old.status(),
            202,
            "the old route keeps working during a reload"
        );
        let status = app.post("new", "{}").await.status();
        if status == 202 {
            break;
        }
        assert_eq!(status, 404);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the new route never appeared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An invalid edit is refused and counted; the routes in force stay.
    app.write_config(&added.replace("verify: none", "verify: nonsense"));
    let start = std::time::Instant::now();
    while !app
        .metrics()
        .await
        .contains(r#"dispatch_relay_config_reloads_total{result="failure"} 1"#)
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the invalid edit was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.post("new", "{}").await.status(), 202);
    app.wait_for_log(|l| l.contains("previous one stays in force") && l.contains("routes.yaml:"))
        .await;
    // The gauge an alert reads holds the refusal until a load succeeds.
    let successful = "dispatch_relay_config_last_reload_successful ";
    assert!(app.metrics().await.contains(&format!("{successful}0")));
    app.write_config(&added);
    let start = std::time::Instant::now();
    while !app.metrics().await.contains(&format!("{successful}1")) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the fixed file was never loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_token_is_named_as_needing_a_restart_until_the_relay_restarts() {
    let app = spawn_app(&hmac_route("cms", TARGET)).await;
    let original = std::fs::read_to_string(app.config_path()).unwrap();
    assert!(original.contains("token: ${GITHUB_TOKEN}"), "{original}");
    let rotated = original.replace("token: ${GITHUB_TOKEN}", "token: ghp_rotatedTokenValue");
    let warnings = || {
        app.logs()
            .into_iter()
            .filter(|l| l.contains("only take effect at the next restart"))
            .collect::<Vec<_>>()
    };
    // Each edit is told apart by a route it adds.
    for (edit, extra) in ["a", "b"].into_iter().enumerate() {
        app.write_config(&format!(
            "{rotated}\n  - id: {extra}\n    verify: none\n    dispatch:\n      - repo: acme/docs\n        event_type: e\n"
        ));
        let start = std::time::Instant::now();
        while warnings().len() < edit + 1 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no warning after edit {edit}: {:#?}",
                app.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The second edit leaves the token as the first one set it; the
        // relay still uses the token it started with, so it still says so.
        assert!(
            warnings()[edit].contains(r#""sections":"github""#),
            "{:#?}",
            warnings()
        );
        // And so does the gauge an alert reads.
        let metrics = app.metrics().await;
        assert!(
            metrics.contains("dispatch_relay_config_restart_required 1"),
            "{metrics}"
        );
    }
    // A file that goes back to the settings the relay started with needs
    // no restart any more.
    app.write_config(&format!(
        "{original}\n  - id: c\n    verify: none\n    dispatch:\n      - repo: acme/docs\n        event_type: e\n"
    ));
    let start = std::time::Instant::now();
    while !app
        .metrics()
        .await
        .contains("dispatch_relay_config_restart_required 0")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the file as started was never taken as such"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !app.logs()
            .iter()
            .any(|l| l.contains("ghp_rotatedTokenValue"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configuration_file_that_cannot_be_read_is_reported_once_and_counted() {
    let app = spawn_app_with(
        TEST_HEAD,
        &hmac_route("cms", TARGET),
        &[("RUST_LOG", "info,dispatch_relay::cli::reload=trace")],
    )
    .await;
    let looks = || {
        app.logs()
            .iter()
            .filter(|l| l.contains("Looked at the configuration file"))
            .count()
    };
    let path = app.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    app.wait_for_log(|l| l.contains("Cannot read the configuration"))
        .await;
    let looked = looks();
    let failures = r#"dispatch_relay_config_reloads_total{result="failure"} 1"#;
    assert!(app.metrics().await.contains(failures));
    // The routes in force keep serving, and the error is not repeated every
    // second while it lasts: the file stays away while the watcher looks at
    // it twice more. (The look that found the error logs its own line
    // after the error, so the count taken above may leave it out: three
    // more lines are two more looks at the least.)
    assert_eq!(app.post_signed("cms", "{}").await.status(), 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while looks() < looked + 3 {
        assert!(std::time::Instant::now() < deadline, "the watcher stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The file comes back as it was: the relay says it reloaded, so that
    // the failure is no longer the latest outcome (the alert on it stops).
    let successes = r#"dispatch_relay_config_reloads_total{result="success"}"#;
    let count = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(successes))
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
    };
    let before = count(&app.metrics().await);
    app.write_config(&text);
    app.wait_for_log(|l| l.contains("Configuration reloaded") && l.contains("file readable again"))
        .await;
    let metrics = app.metrics().await;
    assert_eq!(count(&metrics), before + 1.0, "{metrics}");
    let reports = app
        .logs()
        .iter()
        .filter(|l| l.contains("Cannot read the configuration"))
        .count();
    assert_eq!(reports, 1);
    assert!(app.metrics().await.contains(failures));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_relay_on_the_same_store_is_refused() {
    let app = spawn_app(&hmac_route("cms", TARGET)).await;
    // A second `serve` with the store at `url` (the app's own when `None`).
    let refused = |url: Option<&str>| {
        let env: Vec<(&str, &str)> = url.map(|u| ("RELAY_DATABASE_URL", u)).into_iter().collect();
        let (code, stderr) = app.cli_with_env_and_deadline(
            &["serve", "--listen", "127.0.0.1:0"],
            &env,
            Duration::from_secs(30),
        );
        assert_eq!(code, Some(2), "{url:?}: {stderr}");
        assert!(
            stderr.contains("another `dispatch-relay serve` is using the store"),
            "{url:?}: {stderr}"
        );
    };
    refused(None);
    // Nor under another name: a symbolic link, or a hard link, to the same
    // file. Each would have cleared the first relay's leases, and a hard
    // link's own WAL would have corrupted the store.
    let dir = app.config_path().parent().unwrap().to_owned();
    std::os::unix::fs::symlink(app.db_path(), dir.join("symbolic.db")).unwrap();
    std::fs::hard_link(app.db_path(), dir.join("hard.db")).unwrap();
    for alias in ["symbolic.db", "hard.db"] {
        refused(Some(&format!("sqlite:{}", dir.join(alias).display())));
    }
    // Nor beside a relay of an earlier version, which locks `<store>.lock`
    // instead (stood in for by this test holding that lock).
    let earlier = std::fs::File::create(dir.join("other.db.lock")).unwrap();
    earlier.try_lock().unwrap();
    refused(Some(&format!("sqlite:{}", dir.join("other.db").display())));
    drop(earlier);
    // Nor at a path that holds a WAL but not its store (the store file was
    // moved away): a new store there would discard the WAL's commits.
    std::fs::write(dir.join("moved.db-wal"), b"commits").unwrap();
    let url = format!("sqlite:{}", dir.join("moved.db").display());
    let (code, stderr) = app.cli_with_env_and_deadline(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("RELAY_DATABASE_URL", &url)],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("holds commits of a store that is no longer at"),
        "{stderr}"
    );
    assert!(
        !dir.join("moved.db").exists(),
        "no store was made in its place"
    );
    // The first keeps serving.
    assert_eq!(app.post_signed("cms", "{}").await.status(), 202);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_in_a_directory_that_does_not_exist_yet_is_created_private_and_a_readable_one_is_named()
 {
    let head = format!(
        "{}store:\n  url: sqlite:state/nested/relay.db\n",
        crate::helpers::TEST_HEAD
    );
    let mut app = crate::helpers::spawn_app_with(&head, &hmac_route("cms", TARGET), &[]).await;
    assert_eq!(app.post_signed("cms", "{}").await.status(), 202);
    let dir = app.config_path().parent().unwrap().join("state/nested");
    // It holds every webhook's body: readable by its owner only, and so is
    // its WAL, which SQLite makes with the database's permissions.
    for file in ["relay.db", "relay.db-wal"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join(file)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let readable = "The store can be read by other users";
    assert!(!app.logs().iter().any(|l| l.contains(readable)));
    // A store made by an earlier version, readable by everyone, is left as
    // it is, with a warning at start.
    std::fs::set_permissions(
        dir.join("relay.db"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    app.restart();
    let line = app.wait_for_log(|l| l.contains(readable)).await;
    assert!(line.contains("relay.db") && line.contains("644"), "{line}");
}

/// A `systemctl reload` sent while the relay is still starting must not end
/// it: until a process handles SIGHUP, the signal kills it, and systemd
/// takes an end by SIGHUP for a clean exit that it does not restart. The
/// configuration is served through a FIFO, which holds the relay in its
/// first step (reading it) until the test has sent the signal.
#[test]
fn a_sighup_while_starting_is_a_reload_not_an_exit() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "github:\n  token: t\n  api_url: {}\nroutes:\n  - id: open\n    verify: none\n    dispatch: [{{repo: acme/blog, event_type: e}}]\n",
        crate::helpers::closed_port_url()
    );
    let real = dir.path().join("real.yaml");
    std::fs::write(&real, &text).unwrap();
    let fifo = dir.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let config = dir.path().join("routes.yaml");
    std::os::unix::fs::symlink(&fifo, &config).unwrap();

    let mut relay = crate::helpers::relay_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env("RELAY_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env_remove("RELAY_DATABASE_URL")
        .env_remove("RELAY_LISTEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = relay.stderr.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });

    // Opening the FIFO for writing returns once the relay has opened it to
    // read its configuration. Done on a thread, so that a relay that never
    // gets there fails the test instead of hanging it.
    let (writer_tx, writer) = std::sync::mpsc::channel();
    let fifo_path = fifo.clone();
    std::thread::spawn(move || {
        let _ = writer_tx.send(std::fs::OpenOptions::new().write(true).open(fifo_path));
    });
    let mut writer = writer
        .recv_timeout(Duration::from_secs(30))
        .expect("the relay opened its configuration")
        .unwrap();
    // Later reads (the reload) find the file itself.
    let swap = dir.path().join("routes.yaml.new");
    std::os::unix::fs::symlink(&real, &swap).unwrap();
    std::fs::rename(&swap, &config).unwrap();
    let pid = relay.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    // A relay killed by the signal has closed its end; the write then fails.
    let _ = writer.write_all(text.as_bytes());
    drop(writer);

    let start = std::time::Instant::now();
    let mut seen = Vec::new();
    let mut listening = false;
    while !seen
        .iter()
        .any(|l: &String| l.contains("Configuration reloaded") && l.contains("SIGHUP"))
    {
        if let Ok(Some(status)) = relay.try_wait() {
            panic!(
                "the relay exited ({status}) after SIGHUP:\n{}",
                seen.join("\n")
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no reload after SIGHUP:\n{}",
            seen.join("\n")
        );
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(50)) {
            listening |= line.contains("\"Listening\"");
            seen.push(line);
        }
    }
    assert!(listening, "{}", seen.join("\n"));
    assert!(
        relay.try_wait().unwrap().is_none(),
        "the relay keeps running"
    );
    let _ = relay.kill();
    let _ = relay.wait();
}

/// A job whose lease runs out while it waits out a rate-limit pause is sent
/// once, by the send already waiting, not again by a new lease. The lease is
/// shortened through the test hook `RELAY_TEST_LEASE_MS` so that it runs out
/// within the pause.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_lease_runs_out_during_a_pause_is_sent_once() {
    let head = TEST_HEAD.replace(
        "  pacing: off\n",
        "  pacing:\n    concurrency: 2\n    min_interval: 2s\n",
    );
    assert_ne!(head, TEST_HEAD);
    let app = spawn_app_with(
        &head,
        &hmac_route("cms", TARGET),
        &[("RELAY_TEST_LEASE_MS", "300")],
    )
    .await;
    // The first dispatch is rate-limited for two seconds, answered after a
    // second: the second webhook's job is leased meanwhile, its turn comes
    // (two seconds after the first start) during the pause, and it waits the
    // pause out, long past its 300 ms lease.
    app.github.set_latency(Duration::from_secs(1));
    app.github.push_responses(
        "acme/blog",
        vec![Scripted::RateLimited {
            retry_after_secs: 2,
        }],
    );
    for n in 0..2 {
        let status = app
            .post_signed("cms", &format!(r#"{{"n":{n}}}"#))
            .await
            .status();
        assert_eq!(status, 202);
    }
    app.wait_for_deliveries(Duration::from_secs(60), |list| {
        list.len() == 2 && list.iter().all(|d| d["status"] == "delivered")
    })
    .await;
    // A second send of the waiting job would be leased at once and take
    // the next turn of the pacing, before any later webhook's job, and
    // every send takes as long: so once a third webhook is delivered, a
    // second send of the waiting job would have reached GitHub.
    assert_eq!(app.post_signed("cms", r#"{"n":2}"#).await.status(), 202);
    app.wait_for_deliveries(Duration::from_secs(60), |list| {
        list.len() == 3 && list.iter().all(|d| d["status"] == "delivered")
    })
    .await;
    let mut sent: Vec<_> = app
        .github
        .dispatches()
        .iter()
        .map(|d| d.body.as_ref().unwrap()["client_payload"]["n"].clone())
        .collect();
    sent.sort_by_key(|n| n.to_string());
    assert_eq!(
        sent,
        [0, 1, 2],
        "each webhook is dispatched once: {:#?}",
        app.github.dispatch_attempts()
    );
    assert_eq!(
        app.github.dispatch_attempts_to("acme/blog"),
        4,
        "the rate-limited one and three sends"
    );
}

/// A job whose lease runs out during its send, and whose send ends while
/// the worker is taking new leases, is not sent again by the new lease.
/// With a 1 ms lease every job's lease runs out during its send, so the
/// worker leases jobs still being sent all the time.
#[tokio::test(flavor = "multi_thread")]
async fn jobs_whose_leases_run_out_during_their_sends_are_each_sent_once() {
    let app = spawn_app_with(
        TEST_HEAD,
        &hmac_route("cms", TARGET),
        &[("RELAY_TEST_LEASE_MS", "1")],
    )
    .await;
    app.github.set_latency(Duration::from_millis(5));
    let sends = (0..400).map(|n| {
        let app = &app;
        async move {
            let status = app
                .post_signed("cms", &format!(r#"{{"n":{n}}}"#))
                .await
                .status();
            assert_eq!(status, 202);
        }
    });
    futures_util::future::join_all(sends).await;
    app.wait_for_deliveries(Duration::from_secs(60), |list| {
        list.len() == 400 && list.iter().all(|d| d["status"] == "delivered")
    })
    .await;
    let attempts = app.github.dispatch_attempts();
    let mut seen = std::collections::HashMap::new();
    for request in &attempts {
        let n = request.body.as_ref().unwrap()["client_payload"].to_string();
        *seen.entry(n).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(attempts.len(), 400);
}

/// GitHub's rate-limit pause holds across a restart: a webhook accepted
/// after the restart waits for the pause's end, instead of being sent into
/// a limit GitHub still enforces.
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_pause_outlives_a_restart() {
    let mut app = spawn_app(&hmac_route("cms", TARGET)).await;
    // Long enough that the restart surely falls inside the pause, even on
    // a slow machine: its log line is only written while the pause lasts.
    app.github.push_responses(
        "acme/blog",
        vec![Scripted::RateLimited {
            retry_after_secs: 15,
        }],
    );
    assert_eq!(app.post_signed("cms", r#"{"n":0}"#).await.status(), 202);
    // Logged once the pause is kept in the store.
    app.wait_for_log(|line| line.contains("Dispatch will be retried"))
        .await;
    let first = app.github.dispatch_attempts()[0].received_at;
    app.kill9();
    app.restart();
    app.wait_for_log(|line| line.contains("Waiting out the rate-limit pause"))
        .await;
    // The restarted relay says until when, as the first one did.
    let until_secs = app
        .gauge("dispatch_relay_github_paused_until_timestamp_seconds")
        .await;
    let now_secs = dispatch_relay::clock::now_ms() as f64 / 1000.0;
    assert!(until_secs > now_secs, "{until_secs} is past");
    assert_eq!(app.post_signed("cms", r#"{"n":1}"#).await.status(), 202);
    let sent = app
        .github
        .wait_for_dispatches(2, Duration::from_secs(60))
        .await;
    let attempts = app.github.dispatch_attempts();
    assert_eq!(attempts.len(), 3, "the limited one, then both: {sent:?}");
    for attempt in &attempts[1..] {
        let after = attempt.received_at.duration_since(first);
        assert!(
            after >= Duration::from_millis(14_900),
            "sent {after:?} after the limit that asked for 15 s"
        );
    }
}

/// A secondary limit that states no wait pauses a minute, and each one in
/// a row doubles that, as GitHub asks. The count outlives a restart: a
/// relay that crashes again and again must not go back to asking GitHub
/// every minute while the limit lasts.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_of_unstated_rate_limits_outlives_a_restart() {
    let mut app = spawn_app(&hmac_route("cms", TARGET)).await;
    app.github.push_responses(
        "acme/blog",
        vec![Scripted::SecondaryRateLimit {
            retry_after_secs: None,
        }],
    );
    assert_eq!(app.post_signed("cms", r#"{"n":0}"#).await.status(), 202);
    // Logged once the pause and the run are kept in the store.
    app.wait_for_log(|line| line.contains("Dispatch will be retried"))
        .await;
    app.kill9();
    app.restart();
    let resumed = app
        .wait_for_log(|line| line.contains("were in a row before the restart"))
        .await;
    let resumed: serde_json::Value = serde_json::from_str(&resumed).unwrap();
    assert_eq!(resumed["in_a_row"], 1, "{resumed}");
    assert_eq!(resumed["next_wait_ms"], 120_000, "doubled: {resumed}");
    // The minute's pause is waited out as well.
    app.wait_for_log(|line| line.contains("Waiting out the rate-limit pause"))
        .await;
    assert_eq!(app.github.dispatch_attempts().len(), 1);
}

/// A run of unstated limits taken up at a restart ends, in the store too,
/// with the first answer that is not a rate limit: the restart after it
/// starts again from a minute.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_of_unstated_rate_limits_is_forgotten_once_github_answers() {
    let mut app = spawn_app(&hmac_route("cms", TARGET)).await;
    app.kill9();
    // Three in a row before this start, the last pause over a second ago.
    let over_ms = dispatch_relay::clock::now_ms() - 1_000;
    rusqlite::Connection::open(app.db_path())
        .unwrap()
        .execute(
            "INSERT INTO github_pause (id, until_ms, unstated_in_a_row, unstated_until_ms)
             VALUES (1, ?1, 3, ?1)",
            [over_ms],
        )
        .unwrap();
    app.restart();
    let resumed = app
        .wait_for_log(|line| line.contains("were in a row before the restart"))
        .await;
    let resumed: serde_json::Value = serde_json::from_str(&resumed).unwrap();
    assert_eq!(resumed["in_a_row"], 3, "{resumed}");
    assert_eq!(app.post_signed("cms", r#"{"n":0}"#).await.status(), 202);
    app.github
        .wait_for_dispatches(1, Duration::from_secs(20))
        .await;
    let kept_run = || -> i64 {
        rusqlite::Connection::open(app.db_path())
            .unwrap()
            .query_row(
                "SELECT unstated_in_a_row FROM github_pause WHERE id = 1",
                [],
                |row| row.get(0),
            )
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while kept_run() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the store still holds the run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A store file moved away while the relay runs: the relay would go on
/// committing into a file no one opens again. It refuses instead (503 to
/// webhooks, `/readyz` failing), holds the outcome of the dispatch that was
/// in flight until the store takes it, and goes on once the file is back,
/// without sending that dispatch a second time. The short lease would have
/// run out many times over meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_moved_away_refuses_writes_and_loses_no_outcome() {
    let app = spawn_app_with(
        TEST_HEAD,
        &hmac_route("cms", TARGET),
        &[("RELAY_TEST_LEASE_MS", "300")],
    )
    .await;
    // The dispatch is held at GitHub's door until the store has gone.
    let gate = app.github.hold("POST", "/repos/acme/blog/dispatches");
    // A test hook changes what the relay promises: it says so.
    app.wait_for_log(|l| l.contains("RELAY_TEST_LEASE_MS is set, a hook for tests only"))
        .await;
    let response = app.post_signed("cms", r#"{"n": 1}"#).await;
    assert_eq!(response.status(), 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    gate.wait_for_arrivals(1, Duration::from_secs(20)).await;

    let away = app.db_path().with_extension("away");
    std::fs::rename(app.db_path(), &away).unwrap();
    wait_until_not_ready(&app, deadline).await;
    let refused = app.post_signed("cms", r#"{"n": 2}"#).await;
    assert_eq!(refused.status(), 503);
    let (_, json) = crate::helpers::json_of(refused).await;
    assert_eq!(json["error"], "unavailable", "{json}");
    app.wait_for_log(|l| {
        l.contains("The store refused a commit") && l.contains("moved, deleted or replaced")
    })
    .await;
    gate.open();
    // GitHub answers the dispatch; its outcome waits for the store, longer
    // than the few tries that used to end with the job left leased.
    app.wait_for_log(|l| {
        l.contains("Could not record the attempt; trying until the store takes it")
    })
    .await;
    let outage = std::time::Instant::now();
    while outage.elapsed() < Duration::from_secs(4) {
        assert_eq!(app.github.dispatches_to("acme/blog"), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    std::fs::rename(&away, app.db_path()).unwrap();
    app.wait_for_log(|l| l.contains("Recorded the attempt once the store took writes again"))
        .await;
    app.wait_for_log(|l| l.contains("The store takes writes again"))
        .await;
    let list = app
        .wait_for_deliveries(Duration::from_secs(30), |list| {
            list.len() == 1 && list[0]["status"] == "delivered"
        })
        .await;
    assert_eq!(list[0]["status"], "delivered");
    // The job is not sent again. A second send would be leased before any
    // later webhook's job, and so would reach GitHub before a later
    // webhook's dispatch is answered.
    assert_eq!(app.post_signed("cms", r#"{"n": 3}"#).await.status(), 202);
    app.wait_for_deliveries(Duration::from_secs(30), |list| {
        list.len() == 2 && list.iter().all(|d| d["status"] == "delivered")
    })
    .await;
    assert_eq!(
        app.github.dispatches_received(),
        2,
        "{:#?}",
        app.github.dispatch_attempts()
    );
    let ready = crate::helpers::get(app.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let passes = app
        .wait_for_log(|l| l.contains("Readiness check passes again"))
        .await;
    let passes: Value = serde_json::from_str(&passes).unwrap();
    assert!(
        passes["failed_checks"].as_u64().is_some_and(|n| n >= 1),
        "{passes}"
    );
    // The worker tried to lease, and /readyz was asked, all along; each
    // said so once.
    let logs = app.logs();
    let count = |text: &str| logs.iter().filter(|l| l.contains(text)).count();
    assert!(count("Could not lease jobs") <= 1, "{logs:#?}");
    assert_eq!(count("Readiness check failed"), 1, "{logs:#?}");
}

/// A store reached through a symbolic link is watched at the link, as the
/// configuration names it: with the link gone, the next start would open a
/// new store there, so writes are refused now rather than answered 202. A
/// relay that stops removes its WAL, having closed every connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_reached_through_a_link_is_watched_at_the_link() {
    let outer = tempfile::tempdir().unwrap();
    std::fs::create_dir(outer.path().join("real")).unwrap();
    let link = outer.path().join("link.db");
    std::os::unix::fs::symlink(outer.path().join("real/store.db"), &link).unwrap();
    let head = format!("{TEST_HEAD}store:\n  url: sqlite:{}\n", link.display());
    let mut app = spawn_app_with(&head, &hmac_route("cms", TARGET), &[]).await;
    assert_eq!(app.post_signed("cms", r#"{"n": 1}"#).await.status(), 202);
    app.github
        .wait_for_dispatches(1, Duration::from_secs(30))
        .await;
    assert!(outer.path().join("real/store.db-wal").exists());

    std::fs::remove_file(&link).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    wait_until_not_ready(&app, deadline).await;
    assert_eq!(app.post_signed("cms", r#"{"n": 2}"#).await.status(), 503);

    std::os::unix::fs::symlink(outer.path().join("real/store.db"), &link).unwrap();
    loop {
        let response = app.post_signed("cms", r#"{"n": 3}"#).await;
        if response.status() == 202 {
            break;
        }
        assert_eq!(response.status(), 503);
        assert!(std::time::Instant::now() < deadline, "writes never resumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.sigterm();
    assert!(app.wait_exit(Duration::from_secs(60)).success());
    for leftover in ["real/store.db-wal", "real/store.db-shm"] {
        assert!(
            !outer.path().join(leftover).exists(),
            "{leftover} is left after a clean stop"
        );
    }
}

/// Polls `/readyz` until it answers 503, failing the test after `deadline`.
async fn wait_until_not_ready(app: &crate::helpers::TestApp, deadline: std::time::Instant) {
    let http = crate::helpers::http();
    loop {
        let ready = http.get(app.url("/readyz")).send().await.unwrap();
        if ready.status() == 503 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "/readyz stayed ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A relative `--config` keeps naming the file where the operator edits it
/// after a deploy replaced its directory (a new checkout, a swapped
/// release), not the copy in the directory the relay started in.
#[tokio::test(flavor = "multi_thread")]
async fn a_relative_config_path_follows_its_directory_when_it_is_replaced() {
    let github = crate::fake_github::FakeGitHub::start().await;
    github.add_token(crate::helpers::TOKEN);
    github.add_repo("acme/blog");
    let root = tempfile::tempdir().unwrap();
    let conf = root.path().join("conf");
    let routes = crate::helpers::plain_routes_file;
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("routes.yaml"), routes("old")).unwrap();
    let store = format!("sqlite:{}", root.path().join("relay.db").display());
    let mut env = crate::helpers::relay_env(Some(&github));
    env.push(("RELAY_DATABASE_URL".to_string(), store));
    let (mut child, base_url, _logs, _reader) =
        crate::helpers::start_relay_in(&conf, std::path::Path::new("routes.yaml"), &env, None);
    let http = crate::helpers::http();
    let post = |route: &str| {
        http.post(format!("{base_url}/hooks/{route}"))
            .body("{}")
            .send()
    };
    assert_eq!(post("old").await.unwrap().status(), 202);

    std::fs::rename(&conf, root.path().join("conf.old")).unwrap();
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("routes.yaml"), routes("new")).unwrap();
    let start = std::time::Instant::now();
    while post("new").await.unwrap().status() != 202 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the routes in the new directory were never loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(post("old").await.unwrap().status(), 404);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Under a file-size limit (`ulimit -f`, systemd's LimitFSIZE) a store
/// write past it refuses the webhook with 503; the relay does not die of
/// SIGXFSZ without a word.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_size_limit_refuses_webhooks_instead_of_ending_the_relay() {
    let github = crate::fake_github::FakeGitHub::start().await;
    github.add_token(crate::helpers::TOKEN);
    github.add_repo("acme/blog");
    // Held back, so that the accepted webhooks stay in the store.
    github.set_latency(Duration::from_secs(30));
    let dir = tempfile::tempdir().unwrap();
    let routes = crate::helpers::plain_routes_file("cms");
    std::fs::write(dir.path().join("routes.yaml"), routes).unwrap();
    let env = crate::helpers::relay_env(Some(&github));
    // 4 MB: room for the store, not for the webhooks below.
    let (mut child, base_url, logs, _reader) = crate::helpers::start_relay_in(
        dir.path(),
        &dir.path().join("routes.yaml"),
        &env,
        Some(8192),
    );
    let http = crate::helpers::http();
    let body = serde_json::json!({ "x": "a".repeat(60_000) }).to_string();
    let mut refused = false;
    for _ in 0..200 {
        let status = http
            .post(format!("{base_url}/hooks/cms"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("the relay answers")
            .status();
        if status == 503 {
            refused = true;
            break;
        }
        assert_eq!(status, 202);
    }
    assert!(refused, "the store never reached the limit");
    assert!(child.try_wait().unwrap().is_none(), "the relay ended");
    // The line is written before the answer, but read from the relay's
    // stderr by a thread of its own, which may not have kept it yet.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !logs
        .lock()
        .unwrap()
        .iter()
        .any(|line| line.contains("The store refused a commit"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the refusal was never logged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// An empty store file is what a failed restore or a truncation leaves:
/// the relay starts a new store in it, and says that any queue it held is
/// gone.
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_store_file_is_started_afresh_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let routes = crate::helpers::plain_routes_file("cms");
    std::fs::write(dir.path().join("routes.yaml"), routes).unwrap();
    std::fs::write(dir.path().join("dispatch-relay.db"), "").unwrap();
    let env = crate::helpers::relay_env(None);
    let (mut child, _, logs, _reader) =
        crate::helpers::start_relay_in(dir.path(), &dir.path().join("routes.yaml"), &env, None);
    let logs = logs.lock().unwrap().clone();
    assert!(
        logs.iter()
            .any(|l| l.contains("WARN") && l.contains("The store file was empty (0 bytes)")),
        "{logs:#?}"
    );
    assert!(
        !logs
            .iter()
            .any(|l| l.contains("Created a new, empty store"))
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Overwrites most of the pages that hold stored webhooks, as a failing
/// disk or a stray write would, leaving the schema and the queue readable.
fn damage_stored_webhooks(db_path: &std::path::Path) {
    let conn = rusqlite::Connection::open(db_path).unwrap();
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    let leaves: Vec<i64> = conn
        .prepare("SELECT pageno FROM dbstat WHERE name = 'deliveries' AND pagetype = 'leaf'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    drop(conn);
    assert!(leaves.len() > 4, "{leaves:?}");
    let mut bytes = std::fs::read(db_path).unwrap();
    for number in &leaves[1..leaves.len() - 1] {
        let start = ((number - 1) * page_size) as usize;
        bytes[start..start + page_size as usize].fill(0xAB);
    }
    std::fs::write(db_path, bytes).unwrap();
}

/// A store file damaged while the relay was stopped is found at the next
/// start, although its one-row readiness write still lands: the relay
/// refuses webhooks with `503` and `/readyz` fails, rather than answer
/// `202` into a file it cannot trust, and the log says what to do.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_store_is_found_at_start_and_refuses_webhooks() {
    let mut app = spawn_app(&hmac_route("cms", TARGET)).await;
    let body = serde_json::json!({ "x": "a".repeat(2_000) }).to_string();
    for _ in 0..300 {
        assert_eq!(app.post_signed("cms", &body).await.status(), 202);
    }
    app.stop_and_read_logs();
    damage_stored_webhooks(&app.db_path());
    app.restart();
    wait_until_not_ready(&app, std::time::Instant::now() + Duration::from_secs(30)).await;
    let refused = app.post_signed("cms", &body).await;
    assert_eq!(refused.status(), 503);
    let line = app
        .wait_for_log(|line| line.contains("The store file is damaged"))
        .await;
    assert!(line.contains("ERROR"), "{line}");
}

/// Finished deliveries past `store.retention` are deleted at start, with
/// their jobs and attempts; a pending one is kept whatever its age.
#[tokio::test(flavor = "multi_thread")]
async fn serve_prunes_finished_deliveries_past_the_retention_and_keeps_pending_ones() {
    let head = format!("{TEST_HEAD}store:\n  retention: 1ms\n");
    let mut app = spawn_app_with(&head, &hmac_route("cms", TARGET), &[]).await;
    let wait = Duration::from_secs(60);
    let count = |status: &str| {
        let status = status.to_owned();
        move |list: &[Value]| list.iter().filter(|d| d["status"] == status).count()
    };

    assert_eq!(app.post_signed("cms", r#"{"n": 1}"#).await.status(), 202);
    app.wait_for_deliveries(wait, |list| count("delivered")(list) == 1)
        .await;
    app.github
        .push_responses("acme/blog", vec![Scripted::Status(404)]);
    assert_eq!(app.post_signed("cms", r#"{"n": 2}"#).await.status(), 202);
    app.wait_for_deliveries(wait, |list| count("failed")(list) == 1)
        .await;
    app.github.push_responses(
        "acme/blog",
        vec![Scripted::RateLimited {
            retry_after_secs: 600,
        }],
    );
    assert_eq!(app.post_signed("cms", r#"{"n": 3}"#).await.status(), 202);
    app.wait_for_deliveries(wait, |list| {
        list.iter()
            .any(|d| d["status"] == "pending" && d["targets"][0]["attempts"] == 1)
    })
    .await;
    // At the first start nothing had finished, so nothing was pruned.
    assert!(!app.logs().iter().any(|l| l.contains("Pruned finished")));

    app.restart();
    let line = app
        .wait_for_log(|l| l.contains("Pruned finished deliveries past the retention"))
        .await;
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["pruned"], 2, "{line}");
    let left = app.deliveries(&[]);
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(left[0]["status"], "pending");
    assert_eq!(left[0]["targets"][0]["attempts"], 1, "its attempt is kept");
}
