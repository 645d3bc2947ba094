//! The web console in a real browser: Debian's headless `chromium` driven over WebDriver
//! (`chromedriver`, plain W3C WebDriver over HTTP) against the real `gp4u server` and
//! `gp4u agent` (Docker, the busybox test image, an emulated GPU). It signs in with a pasted
//! token, opens a RUNNING job and watches its charts grow over the live stream, checks the
//! session cookie is out of the page's reach, waits for the job to settle and sees the
//! browser's own ledger check (WebCrypto: leaf and node hashes to the checkpoint's root, the
//! checkpoint's Ed25519 signature) pass, takes a screenshot and decodes it (real size, many
//! colours), and opens another customer's job URL to find nothing of it. It measures the job
//! page's first contentful paint and the time from a telemetry packet's receipt by the server
//! to the chart's update in the page (printed as `GP4U-CONSOLE-PERF`, BENCHMARKS.md).
//!
//! Skipped loudly without chromium/chromedriver or Docker, a failure when `CI=true`. Network:
//! loopback and the test's containers; chromium runs with background networking, updates,
//! sync and the like off, and a host resolver that resolves nothing but loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Running, assert_verifies_within, docker_image, people, start_agent, start_server_with,
};
use gp4u_client::Client;
use gp4u_proto::JobStatus;
use gp4u_store::Engine;
use gp4u_store::testing::TestDatabase;
use gp4u_testkit::journey;
use reqwest::Method;
use serde_json::{Value, json};

/// `name` on the PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

/// Chromium and its driver, or `None` after saying loudly that `test` is skipped (a failure in
/// CI).
fn browser(test: &str) -> Option<(PathBuf, PathBuf)> {
    match (on_path("chromium"), on_path("chromedriver")) {
        (Some(chromium), Some(driver)) => Some((chromium, driver)),
        _ => {
            common::skip_unless_ci(
                "GP4U-BROWSER-SKIPPED",
                test,
                "chromium or chromedriver is missing (apt-get install chromium chromium-driver)",
            );
            None
        }
    }
}

/// A W3C WebDriver session over plain HTTP.
struct Driver {
    http: reqwest::Client,
    url: String,
    session: String,
}

impl Driver {
    async fn command(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.url, self.session);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(&body);
        } else if method == Method::POST {
            request = request.json(&json!({}));
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status} {body}"
        );
        body["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command(Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn script(&self, script: &str) -> Value {
        self.command(
            Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .command(
                Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found
            .as_object()
            .and_then(|object| object.values().next())
            .and_then(Value::as_str)
            .unwrap()
            .to_string()
    }

    /// Polls `script` until it returns something truthy (its value), for at most `seconds`.
    async fn wait_for(&self, what: &str, script: &str, seconds: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let value = self.script(script).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(text) => !text.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                let text = self.script("return document.body.innerText").await;
                panic!("waited {seconds} s for {what}; the page says:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let encoded = self.command(Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap())
            .unwrap()
    }
}

/// A decoded 8-bit RGB(A) PNG: width, height and its pixels as RGBA.
fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<[u8; 4]>) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let mut at = 8;
    let (mut width, mut height, mut color_type) = (0u32, 0u32, 0u8);
    let mut data = Vec::new();
    while at + 8 <= bytes.len() {
        let length = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let kind = &bytes[at + 4..at + 8];
        let chunk = &bytes[at + 8..at + 8 + length];
        match kind {
            b"IHDR" => {
                width = u32::from_be_bytes(chunk[0..4].try_into().unwrap());
                height = u32::from_be_bytes(chunk[4..8].try_into().unwrap());
                assert_eq!(chunk[8], 8, "bit depth");
                color_type = chunk[9];
                assert_eq!(chunk[12], 0, "interlaced PNGs are not decoded here");
            }
            b"IDAT" => data.extend_from_slice(chunk),
            b"IEND" => break,
            _ => {}
        }
        at += 12 + length;
    }
    let channels = match color_type {
        2 => 3,
        6 => 4,
        other => panic!("PNG colour type {other} not decoded here"),
    };
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&data[..])
        .read_to_end(&mut raw)
        .unwrap();
    let stride = width as usize * channels;
    assert_eq!(raw.len(), height as usize * (stride + 1), "PNG data size");
    let mut previous = vec![0u8; stride];
    let mut pixels = Vec::with_capacity(width as usize * height as usize);
    for row in raw.chunks(stride + 1) {
        let filter = row[0];
        let mut line = row[1..].to_vec();
        for i in 0..stride {
            let left = if i >= channels { line[i - channels] } else { 0 };
            let up = previous[i];
            let up_left = if i >= channels {
                previous[i - channels]
            } else {
                0
            };
            let predictor = match filter {
                0 => 0,
                1 => left,
                2 => up,
                3 => ((u16::from(left) + u16::from(up)) / 2) as u8,
                4 => {
                    let p = i16::from(left) + i16::from(up) - i16::from(up_left);
                    let (pa, pb, pc) = (
                        (p - i16::from(left)).abs(),
                        (p - i16::from(up)).abs(),
                        (p - i16::from(up_left)).abs(),
                    );
                    if pa <= pb && pa <= pc {
                        left
                    } else if pb <= pc {
                        up
                    } else {
                        up_left
                    }
                }
                other => panic!("PNG filter {other}"),
            };
            line[i] = line[i].wrapping_add(predictor);
        }
        for pixel in line.chunks(channels) {
            pixels.push([pixel[0], pixel[1], pixel[2], *pixel.get(3).unwrap_or(&255)]);
        }
        previous = line;
    }
    (width, height, pixels)
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_headless_chromium() {
    let test = "the_console_in_headless_chromium";
    let Some((chromium, chromedriver)) = browser(test) else {
        return;
    };
    let Some((image, digest)) = docker_image(test) else {
        return;
    };
    let db = TestDatabase::create(Engine::Sqlite, "console_browser")
        .await
        .unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let server = start_server_with(data_dir.path(), &db.url, &["--telemetry-interval-s", "1"]);
    let base = server.base.clone();
    let folks = people(&base, data_dir.path(), 100.0).await;
    let agent_dir = tempfile::tempdir().unwrap();
    let _agent = start_agent(&base, &folks.token_file, agent_dir.path());
    let admin = Client::new(&base, Some(&folks.admin)).unwrap();
    let customer = Client::new(&base, Some(&folks.customer)).unwrap();

    // Another customer, with a job of their own.
    let other = admin
        .create_user(&journey::new_user("Mallory", "customer", Some(100.0)))
        .await
        .unwrap();
    let other_token = admin.issue_token(&other.id, None).await.unwrap().token;
    let mallory = Client::new(&base, Some(&other_token)).unwrap();
    let gpu_id = journey::first_gpu(&customer, Duration::from_secs(60))
        .await
        .id;
    // The typed client over the routes the console added: the operator's user list, the
    // provider's own nodes.
    let users = admin.users().await.unwrap();
    assert!(
        users.users.iter().any(|user| user.name == "Mallory"),
        "{users:?}"
    );
    let provider_token = std::fs::read_to_string(&folks.token_file).unwrap();
    let nodes = Client::new(&base, Some(provider_token.trim()))
        .unwrap()
        .nodes()
        .await
        .unwrap();
    assert_eq!(nodes.nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes.nodes[0].gpus.len(), 1, "{nodes:?}");
    // About 25 s of busy work, so that the emulated GPU's values move.
    let submit = |name: &str| {
        json!({"name": name, "gpuId": gpu_id, "workload_type": "BATCH", "expectedDurationHours": 0.1,
               "docker_image": image, "docker_image_sha256": digest,
               "command": ["sh", "-c", "end=$(($(date +%s)+25)); while [ $(date +%s) -lt $end ]; do :; done; echo done"]})
    };
    let other_job = mallory
        .submit(&submit("mallory-private-genome-run"), None)
        .await
        .unwrap()
        .id;
    // Mallory's job only needs to exist: cancelled, so that it leaves the GPU to ours.
    mallory.cancel(&other_job).await.unwrap();
    let job_id = customer
        .submit(&submit("grace-console-run"), None)
        .await
        .unwrap()
        .id;

    // chromedriver and a headless chromium that talks to nothing but loopback.
    let driver_port = common::free_port();
    let driver_child = Command::new(&chromedriver)
        .arg(format!("--port={driver_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _driver_process = Running {
        child: driver_child,
        base: String::new(),
        unmount: None,
    };
    let driver_url = format!("http://127.0.0.1:{driver_port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = http.get(format!("{driver_url}/status")).send().await
            && let Ok(status) = response.json::<Value>().await
            && status["value"]["ready"] == true
        {
            break;
        }
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile = tempfile::tempdir().unwrap();
    let args = [
        "--headless=new".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        format!("--user-data-dir={}", profile.path().display()),
        "--window-size=1280,2200".into(),
        "--no-first-run".into(),
        "--no-default-browser-check".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--disable-default-apps".into(),
        "--disable-extensions".into(),
        "--disable-domain-reliability".into(),
        "--disable-client-side-phishing-detection".into(),
        "--disable-breakpad".into(),
        "--metrics-recording-only".into(),
        "--safebrowsing-disable-auto-update".into(),
        "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,CertificateTransparencyComponentUpdater,DialMediaRouteProvider".into(),
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1".into(),
    ];
    let created: Value = http
        .post(format!("{driver_url}/session"))
        .json(&json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = created["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
        .to_string();
    let driver = Driver {
        http: http.clone(),
        url: driver_url.clone(),
        session,
    };
    let outcome = drive(
        &driver,
        &customer,
        &base,
        &folks.customer,
        &job_id,
        &other_job,
    )
    .await;
    let _ = http
        .delete(format!("{driver_url}/session/{}", driver.session))
        .send()
        .await;
    outcome.unwrap_or_else(|message: String| panic!("{message}"));
}

/// The browser's part; an error message (after which the session is closed) or success.
async fn drive(
    driver: &Driver,
    client: &Client,
    base: &str,
    customer: &str,
    job_id: &str,
    other_job: &str,
) -> Result<(), String> {
    // Sign in by pasting the token.
    driver.goto(&format!("{base}/")).await;
    let url = driver.script("return location.pathname").await;
    assert_eq!(
        url, "/console/sign-in",
        "not signed in: to the sign-in page"
    );
    let field = driver.element("#token").await;
    driver
        .command(
            Method::POST,
            &format!("/element/{field}/value"),
            Some(json!({"text": customer})),
        )
        .await;
    let button = driver.element("form.sign-in button[type=submit]").await;
    driver
        .command(Method::POST, &format!("/element/{button}/click"), None)
        .await;
    driver
        .wait_for(
            "the jobs page",
            "return document.querySelector('#jobs') !== null",
            10,
        )
        .await;
    // The session cookie is HttpOnly: no script of the page sees the token.
    let cookies = driver.script("return document.cookie").await;
    assert!(
        !cookies.as_str().unwrap().contains("gp4u_session"),
        "{cookies}"
    );
    let listed = driver
        .script("return document.querySelector('#jobs tbody').innerText")
        .await;
    assert!(listed.as_str().unwrap().contains(job_id), "{listed}");
    assert!(!listed.as_str().unwrap().contains(other_job), "{listed}");

    // Wait for the job to run, then open its page.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let job = client
            .job(job_id)
            .await
            .map_err(|error| error.to_string())?;
        if job.status == JobStatus::Running {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the job never ran: {job:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    driver.goto(&format!("{base}/console/jobs/{job_id}")).await;
    let fcp = driver
        .wait_for(
            "first-contentful-paint",
            "const p = performance.getEntriesByName('first-contentful-paint')[0]; return p ? p.startTime : null",
            10,
        )
        .await
        .as_f64()
        .unwrap();
    let navigation = driver
        .script("const n = performance.getEntriesByType('navigation')[0]; return [n.responseStart, n.domContentLoadedEventEnd, n.loadEventEnd, n.encodedBodySize]")
        .await;
    let status = driver
        .script("return document.querySelector('#job-status').textContent")
        .await;
    assert_eq!(status, "RUNNING");
    // One snapshot of the live state, then at least five more samples must land in the page.
    let snapshot = "const u = (window.gp4uConsole || {updates: []}).updates; return {\
        points: Number(document.querySelector('#chart-gpu_utilization_pct').dataset.points), \
        count: Number(document.querySelector('#sample-count').textContent), \
        painted: u.filter(x => x.paint_ms).length, updates: u.length, \
        line: document.querySelector('#chart-power_draw_watts polyline').getAttribute('points')}";
    let before = driver.script(snapshot).await;
    let wanted = before["painted"].as_u64().unwrap() + 5;
    driver
        .wait_for(
            "five more live samples",
            &format!(
                "return window.gp4uConsole.updates.filter(u => u.paint_ms).length >= {wanted}"
            ),
            30,
        )
        .await;
    let after = driver.script(snapshot).await;
    let (count_before, count_after) = (
        before["count"].as_u64().unwrap(),
        after["count"].as_u64().unwrap(),
    );
    let (points_before, points_after) = (
        before["points"].as_u64().unwrap(),
        after["points"].as_u64().unwrap(),
    );
    let arrived = after["updates"].as_u64().unwrap() - before["updates"].as_u64().unwrap();
    assert!(arrived >= 5, "{before} → {after}");
    assert_eq!(
        count_after,
        count_before + arrived,
        "each sample counted once: {before} → {after}"
    );
    assert!(
        points_after == (points_before + arrived).min(300),
        "chart points {points_before} → {points_after} after {arrived} samples"
    );
    assert_ne!(
        before["line"], after["line"],
        "the power chart did not change"
    );
    let live = driver
        .script("return document.querySelector('#live-status').textContent")
        .await;
    assert!(live.as_str().unwrap().starts_with("Live"), "{live}");
    let updates = driver.script("return window.gp4uConsole.updates").await;
    let mut to_dom: Vec<f64> = Vec::new();
    let mut to_paint: Vec<f64> = Vec::new();
    for update in updates.as_array().unwrap() {
        let at = update["at_ms"].as_f64().unwrap();
        to_dom.push(update["dom_ms"].as_f64().unwrap() - at);
        if let Some(paint) = update["paint_ms"].as_f64() {
            to_paint.push(paint - at);
        }
    }
    to_dom.sort_by(f64::total_cmp);
    to_paint.sort_by(f64::total_cmp);

    // A screenshot of the running job's page: real size, many colours.
    let png = driver.screenshot().await;
    let (width, height, pixels) = decode_png(&png);
    assert!(width >= 1000 && height >= 1000, "{width}×{height}");
    let mut colours: Vec<[u8; 4]> = pixels.clone();
    colours.sort_unstable();
    colours.dedup();
    assert!(
        colours.len() >= 64,
        "only {} distinct colours",
        colours.len()
    );
    let background = pixels
        .iter()
        .filter(|pixel| **pixel == pixels[pixels.len() / 2])
        .count();
    assert!(background < pixels.len() * 95 / 100, "a blank screenshot");
    let shot = std::env::temp_dir().join("gp4u-console-job.png");
    std::fs::write(&shot, &png).unwrap();

    // The job ends and settles; its ledger entries sealed, the page (reloaded) checks them.
    assert_verifies_within(job_id, base, customer, 120).await;
    driver.goto(&format!("{base}/console/jobs/{job_id}")).await;
    let verdict = driver
        .wait_for(
            "the ledger check",
            "const s = document.querySelector('#ledger-status'); return ['pass','fail','partial','unsupported','empty'].includes(s.dataset.result) ? s.dataset.result + ': ' + s.textContent : null",
            20,
        )
        .await;
    let verdict = verdict.as_str().unwrap().to_string();
    if !verdict.starts_with("pass: PASS") {
        return Err(format!(
            "the browser's ledger check did not pass: {verdict}"
        ));
    }
    driver
        .script("document.getElementById('h-ledger').scrollIntoView(); return true")
        .await;
    let ledger_png = driver.screenshot().await;
    let (ledger_width, _, _) = decode_png(&ledger_png);
    assert!(ledger_width >= 1000);
    std::fs::write(
        std::env::temp_dir().join("gp4u-console-ledger.png"),
        &ledger_png,
    )
    .unwrap();
    let cells = driver
        .script("return Array.from(document.querySelectorAll('[id^=entry-check-]')).map(c => c.dataset.result)")
        .await;
    let cells = cells.as_array().unwrap();
    assert!(cells.len() >= 3, "{cells:?}");
    assert!(cells.iter().all(|cell| cell == "pass"), "{cells:?}");
    // The check is not a rubber stamp: a body changed by one byte, a signature changed by one
    // character, a proof hash changed by one digit — each is a FAIL; the original passes again.
    let recheck = |tamper: &str| {
        format!(
            "const block = document.getElementById('ledger-data'); \
             if (!window.original) {{ window.original = block.textContent; }} \
             const d = JSON.parse(window.original); {tamper}; \
             block.textContent = JSON.stringify(d); window.gp4uConsole.ledger = null; \
             window.gp4uConsole.checkLedger(); return true"
        )
    };
    let outcome = "const l = window.gp4uConsole.ledger; \
        return l && l.result !== 'checking' ? l.result + ': ' + l.text : null";
    for (what, tamper, says) in [
        ("a body", "d.entries[0].body += ' '", "did not check"),
        (
            "the signature",
            "const cut = d.checkpoint.length - 6; \
             d.checkpoint = d.checkpoint.slice(0, cut) + \
             (d.checkpoint[cut] === 'A' ? 'B' : 'A') + d.checkpoint.slice(cut + 1)",
            "not validly signed",
        ),
        (
            "a proof",
            "const e = d.entries.find(x => x.inclusion_proof.length > 0); \
             const h = e.inclusion_proof[0]; \
             e.inclusion_proof[0] = (h[0] === '0' ? '1' : '0') + h.slice(1)",
            "did not check",
        ),
        ("nothing", "", "PASS"),
    ] {
        driver.script(&recheck(tamper)).await;
        let verdict = driver.wait_for("the re-check", outcome, 10).await;
        let verdict = verdict.as_str().unwrap();
        let expected = if what == "nothing" {
            "pass: "
        } else {
            "fail: "
        };
        if !verdict.starts_with(expected) || !verdict.contains(says) {
            return Err(format!("tampering with {what}: {verdict}"));
        }
    }
    let settled = driver
        .script("return document.querySelector('#h-settlement').parentElement.innerText")
        .await;
    assert!(
        settled.as_str().unwrap().contains("customer_charged"),
        "{settled}"
    );

    // Another customer's job: nothing of it.
    driver
        .goto(&format!("{base}/console/jobs/{other_job}"))
        .await;
    let heading = driver
        .script("return document.querySelector('h1').textContent")
        .await;
    assert_eq!(heading, "Job not found");
    let source = driver
        .script("return document.documentElement.outerHTML")
        .await;
    let source = source.as_str().unwrap();
    assert!(!source.contains("mallory-private-genome-run"), "{source}");
    assert!(!source.contains(other_job), "{source}");

    println!(
        "GP4U-CONSOLE-PERF first_contentful_paint_ms={fcp:.0} navigation[responseStart,domContentLoaded,load]_ms,html_bytes={navigation} \
         telemetry_to_dom_ms median={:.0} p95={:.0} max={:.0} telemetry_to_next_frame_ms median={:.0} p95={:.0} max={:.0} samples={} screenshot={} ({width}x{height}, {} colours) ledger=\"{verdict}\"",
        percentile(&to_dom, 0.5),
        percentile(&to_dom, 0.95),
        to_dom.last().unwrap(),
        percentile(&to_paint, 0.5),
        percentile(&to_paint, 0.95),
        to_paint.last().unwrap(),
        to_dom.len(),
        shot.display(),
        colours.len(),
    );
    Ok(())
}
