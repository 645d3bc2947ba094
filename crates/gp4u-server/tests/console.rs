//! The web console in process (SPEC §11): sign-in sets the session cookie with the right
//! attributes, a refused token sets none, state-changing requests without the session's CSRF
//! token or from another origin are refused, another customer's job is a 404 that shows
//! nothing of it, and hostile strings are escaped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

use axum::http::{HeaderMap, Method, StatusCode};
use gp4u_proto::paths;
use gp4u_store::Engine;
use serde_json::json;
use support::*;

async fn sqlite(test: &str) -> TestApp {
    TestApp::new(Engine::Sqlite, test).await.unwrap()
}

const HOST: &str = "console.test:8080";
const ORIGIN: &str = "http://console.test:8080";

/// A browser-like request: Host, optional cookie, optional form body and extra headers.
async fn browse(
    app: &TestApp,
    method: Method,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
    extra: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let cookie_header = cookie.map(|token| format!("gp4u_session={token}"));
    let mut headers: Vec<(&str, &str)> = vec![("host", HOST)];
    if let Some(cookie) = &cookie_header {
        headers.push(("cookie", cookie));
    }
    if form.is_some() {
        headers.push(("content-type", "application/x-www-form-urlencoded"));
    }
    headers.extend_from_slice(extra);
    let (status, headers, body) = app
        .raw(
            method,
            path,
            None,
            form.unwrap_or_default().as_bytes().to_vec(),
            &headers,
        )
        .await;
    (status, headers, String::from_utf8(body).unwrap())
}

fn set_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get("set-cookie")
        .map(|value| value.to_str().unwrap().to_string())
}

/// The CSRF token a page rendered into its forms.
fn csrf_in(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker).expect("a form with a CSRF token") + marker.len();
    page[start..start + 32].to_string()
}

fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_cookie_and_a_refused_token_sets_none() {
    let app = sqlite("console_sign_in").await;
    let (customer_id, customer) = app.user("customer", None).await;

    // Not signed in: the console sends the browser to the sign-in page, which is HTML under a
    // strict policy.
    let (status, headers, _) = browse(&app, Method::GET, "/", None, None, &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/console/sign-in");
    let (status, headers, page) =
        browse(&app, Method::GET, "/console/sign-in", None, None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'self'")
    );
    assert!(page.contains("<label for=\"token\">"), "{page}");

    // A good token: a session cookie carrying a session token of its own (not the pasted API
    // token), HttpOnly, SameSite=Strict, for 12 h (the pasted token lives 7 days); Secure
    // when a TLS proxy says the request came over HTTPS.
    let form = format!("token={}", form_encode(&customer));
    let origin = [("origin", ORIGIN)];
    let (status, headers, _) = browse(
        &app,
        Method::POST,
        "/console/sign-in",
        None,
        Some(&form),
        &origin,
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/");
    let cookie = set_cookie(&headers).expect("a session cookie");
    let session = cookie
        .strip_prefix("gp4u_session=")
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .to_string();
    assert_ne!(session, customer, "the browser never holds the API token");
    // The session is the same user at the same clearance, for 12 hours.
    let claims = gp4u_core::token::verify(&session, &keys(), app.clock_seconds()).unwrap();
    let pasted = gp4u_core::token::verify(&customer, &keys(), app.clock_seconds()).unwrap();
    assert_eq!((&claims.sub, claims.clr), (&pasted.sub, pasted.clr));
    assert_eq!(claims.exp, app.clock_seconds() + 12 * 3600);
    let (status, _, page) = browse(&app, Method::GET, "/", Some(&session), None, &[]).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    let max_age: i64 = cookie
        .split("Max-Age=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(max_age, 12 * 3600, "expires with the session");
    // A pasted token that expires sooner bounds the session.
    let short = token_for(&customer_id, 1, app.clock_seconds() + 600);
    let (_, headers, _) = browse(
        &app,
        Method::POST,
        "/console/sign-in",
        None,
        Some(&format!("token={}", form_encode(&short))),
        &origin,
    )
    .await;
    assert!(
        set_cookie(&headers).unwrap().contains("Max-Age=600"),
        "{:?}",
        set_cookie(&headers)
    );
    assert!(!cookie.contains("Secure"), "{cookie}");
    let (_, headers, _) = browse(
        &app,
        Method::POST,
        "/console/sign-in",
        None,
        Some(&form),
        &[("origin", ORIGIN), ("x-forwarded-proto", "https")],
    )
    .await;
    assert!(set_cookie(&headers).unwrap().contains("; Secure"));

    // A page opened before signing in is where sign-in goes back to — a console path only.
    let (status, headers, _) =
        browse(&app, Method::GET, "/console/jobs/job_abc", None, None, &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        headers["location"],
        "/console/sign-in?next=/console/jobs/job_abc"
    );
    let (_, _, page) = browse(
        &app,
        Method::GET,
        "/console/sign-in?next=/console/jobs/job_abc",
        None,
        None,
        &[],
    )
    .await;
    assert!(
        page.contains("name=\"next\" value=\"/console/jobs/job_abc\""),
        "{page}"
    );
    for (next, location) in [
        ("/console/jobs/job_abc", "/console/jobs/job_abc"),
        ("//evil.test/x", "/"),
        ("https://evil.test/", "/"),
        ("/\\evil.test", "/"),
        ("/console/jobs/\"><script>", "/"),
    ] {
        let form = format!(
            "token={}&next={}",
            form_encode(&customer),
            form_encode(next)
        );
        let (status, headers, _) = browse(
            &app,
            Method::POST,
            "/console/sign-in",
            None,
            Some(&form),
            &origin,
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{next}");
        assert_eq!(headers["location"], location, "{next}");
    }

    // Signed in: the jobs page.
    let (status, _, page) = browse(&app, Method::GET, "/", Some(&customer), None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<h1>Your jobs</h1>"), "{page}");
    assert!(page.contains("Sign out"));

    // Refused tokens: another secret's, an expired one, garbage. No cookie, the reason shown.
    let forged = {
        use gp4u_core::token::{Claims, TokenSecret, mint};
        let claims = Claims {
            sub: "usr_admin".into(),
            clr: 3,
            trs: 100.0,
            exp: app.clock_seconds() + 3600,
        };
        mint(&claims, &TokenSecret::new(OTHER_SECRET.to_vec()).unwrap())
    };
    let expired = token_for("usr_admin", 3, app.clock_seconds() - 1);
    for (token, says) in [
        (forged.as_str(), "signature"),
        (expired.as_str(), "expired"),
        ("not a token <b>", "not a GP4U token"),
    ] {
        let form = format!("token={}", form_encode(token));
        let (status, headers, page) = browse(
            &app,
            Method::POST,
            "/console/sign-in",
            None,
            Some(&form),
            &origin,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token}: {page}");
        assert!(set_cookie(&headers).is_none(), "{token}");
        assert!(page.contains(says), "{token}: {page}");
        assert!(!page.contains("<b>"), "escaped: {page}");
    }
    // A cookie the API refuses now (here: expired) ends the session: cleared, said why.
    let (status, headers, page) = browse(&app, Method::GET, "/", Some(&expired), None, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(page.contains("Your session ended"), "{page}");
    assert!(set_cookie(&headers).unwrap().contains("Max-Age=0"));
}

#[tokio::test]
async fn state_changing_requests_need_this_origin_and_the_sessions_csrf_token() {
    let app = sqlite("console_csrf").await;
    let gpu = app.gpu(2.0).await;
    let (_, customer) = app.user("customer", None).await;
    let id = app.submit(&customer, job_body(&gpu)).await;
    let (status, _, page) = browse(
        &app,
        Method::GET,
        &format!("/console/jobs/{id}"),
        Some(&customer),
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let csrf = csrf_in(&page);
    let cancel = format!("/console/jobs/{id}/cancel");

    // Sign-in from another site's page (login CSRF) is refused.
    let form = format!("token={}", form_encode(&customer));
    let (status, headers, _) = browse(
        &app,
        Method::POST,
        "/console/sign-in",
        None,
        Some(&form),
        &[("origin", "http://evil.test")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(set_cookie(&headers).is_none());

    // Cancel: no token, a wrong one, another origin, a cross-site fetch — each refused, and
    // the job untouched.
    let other_csrf = "0".repeat(32);
    let refused: [(String, Vec<(&str, &str)>); 4] = [
        (String::new(), vec![("origin", ORIGIN)]),
        (format!("csrf={other_csrf}"), vec![("origin", ORIGIN)]),
        (format!("csrf={csrf}"), vec![("origin", "http://evil.test")]),
        (
            format!("csrf={csrf}"),
            vec![("sec-fetch-site", "cross-site")],
        ),
    ];
    for (form, headers) in &refused {
        let (status, _, page) = browse(
            &app,
            Method::POST,
            &cancel,
            Some(&customer),
            Some(form),
            headers,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{form} {headers:?}: {page}");
        assert_eq!(app.job(&id).await["status"], "PENDING");
    }
    // The page's own form: cancelled.
    let (status, headers, _) = browse(
        &app,
        Method::POST,
        &cancel,
        Some(&customer),
        Some(&format!("csrf={csrf}")),
        &[("origin", ORIGIN), ("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], format!("/console/jobs/{id}"));
    assert_eq!(app.job(&id).await["status"], "CANCELLED");

    // Sign-out is CSRF-safe too, then clears the cookie.
    let (status, headers, _) = browse(
        &app,
        Method::POST,
        "/console/sign-out",
        Some(&customer),
        Some(&format!("csrf={other_csrf}")),
        &[("origin", ORIGIN)],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(set_cookie(&headers).is_none());
    let (status, headers, _) = browse(
        &app,
        Method::POST,
        "/console/sign-out",
        Some(&customer),
        Some(&format!("csrf={csrf}")),
        &[("origin", ORIGIN)],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(set_cookie(&headers).unwrap().contains("Max-Age=0"));
}

#[tokio::test]
async fn another_customers_job_is_a_404_that_shows_nothing_of_it() {
    let app = sqlite("console_cross_tenant").await;
    let gpu = app.gpu(2.0).await;
    let (_, alice) = app.user("customer", None).await;
    let (_, mallory) = app.user("customer", None).await;
    let mut body = job_body(&gpu);
    body["name"] = json!("alice-secret-protein-fold");
    let id = app.submit(&alice, body).await;

    let (status, _, page) = browse(
        &app,
        Method::GET,
        &format!("/console/jobs/{id}"),
        Some(&alice),
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("alice-secret-protein-fold"));

    for path in [
        format!("/console/jobs/{id}"),
        format!("/console/jobs/{id}/telemetry"),
    ] {
        let (status, _, page) = browse(&app, Method::GET, &path, Some(&mallory), None, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(!page.contains("alice-secret"), "{path}: {page}");
        assert!(!page.contains(&id), "{path}: {page}");
    }
    let (_, _, list) = browse(&app, Method::GET, "/", Some(&mallory), None, &[]).await;
    assert!(
        !list.contains("alice-secret") && !list.contains(&id),
        "{list}"
    );
    // Cancelling it with Mallory's own valid CSRF token: still not found, still queued.
    let (_, _, mallory_page) = browse(&app, Method::GET, "/", Some(&mallory), None, &[]).await;
    let (status, _, page) = browse(
        &app,
        Method::POST,
        &format!("/console/jobs/{id}/cancel"),
        Some(&mallory),
        Some(&format!("csrf={}", csrf_in(&mallory_page))),
        &[("origin", ORIGIN)],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{page}");
    assert!(!page.contains("alice-secret"));
    assert_eq!(app.job(&id).await["status"], "PENDING");
    // The admin sees it (the API's rule), but not Mallory's admin page.
    let (status, _, _) = browse(
        &app,
        Method::GET,
        "/console/admin",
        Some(&mallory),
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, page) = browse(
        &app,
        Method::GET,
        &format!("/console/jobs/{id}"),
        Some(&app.admin),
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("alice-secret-protein-fold"));
}

#[tokio::test]
async fn hostile_strings_are_escaped_everywhere_they_appear() {
    let app = sqlite("console_escaping").await;
    let gpu = app.gpu(2.0).await;
    let (_, customer) = app.user("customer", None).await;
    let hostile = "<script>alert(\"x\")</script><img src=x onerror='alert(1)'>&amp;";
    let mut body = job_body(&gpu);
    body["name"] = json!(hostile);
    let id = app.submit(&customer, body).await;
    // A hostile user name, on the admin page and in the header.
    let created = app
        .call(
            Method::POST,
            paths::ADMIN_USERS,
            Some(&app.admin),
            Some(json!({"name": "</td><script>alert(2)</script>", "role": "customer"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);

    let escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=&#39;alert(1)&#39;&gt;&amp;amp;";
    for path in ["/".to_string(), format!("/console/jobs/{id}")] {
        let (status, _, page) = browse(&app, Method::GET, &path, Some(&customer), None, &[]).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(page.contains(escaped), "{path}: {page}");
        assert!(!page.contains("<script>alert"), "{path}: {page}");
        assert!(!page.contains("<img src=x"), "{path}: {page}");
    }
    let (status, _, page) = browse(
        &app,
        Method::GET,
        "/console/admin",
        Some(&app.admin),
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("&lt;/td&gt;&lt;script&gt;alert(2)&lt;/script&gt;"),
        "{page}"
    );
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(page.contains("<table id=\"users\">"));
}

#[tokio::test]
async fn provider_and_admin_pages_read_the_api_for_their_roles() {
    let app = sqlite("console_roles").await;
    let node = app.node(2, 2.5, "eu-west-1").await;
    let other = app.node(1, 3.0, "us-east-1").await;
    let (status, _, page) = browse(
        &app,
        Method::GET,
        "/console/provider",
        Some(&node.token),
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains(&format!("Node {}", node.node_id)), "{page}");
    assert!(
        !page.contains(&other.node_id),
        "another provider's node: {page}"
    );
    assert_eq!(page.matches("RTX 4090").count(), 2, "{page}");
    // The provider has no admin page; the admin has both links.
    let (status, _, _) = browse(
        &app,
        Method::GET,
        "/console/admin",
        Some(&node.token),
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, page) = browse(
        &app,
        Method::GET,
        "/console/admin",
        Some(&app.admin),
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for name in ["Mnemo", "usr_admin", "Chambers"] {
        assert!(
            page.to_lowercase().contains(&name.to_lowercase()),
            "{name}: {page}"
        );
    }
    // GET /api/providers: the caller's own nodes, providers only.
    let reply = app
        .call(Method::GET, paths::PROVIDERS, Some(&node.token), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let nodes = reply.body["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["node_id"], node.node_id.as_str());
    assert_eq!(nodes[0]["gpus"].as_array().unwrap().len(), 2);
    let (_, customer) = app.user("customer", None).await;
    let reply = app
        .call(Method::GET, paths::PROVIDERS, Some(&customer), None)
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    // GET /api/admin/users: the operator's list, admins only.
    let reply = app
        .call(Method::GET, paths::ADMIN_USERS, Some(&app.admin), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body["users"].as_array().unwrap().len() >= 3);
    let reply = app
        .call(Method::GET, paths::ADMIN_USERS, Some(&node.token), None)
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    // The assets are served by the binary.
    let (status, headers, script) = browse(
        &app,
        Method::GET,
        "/console/assets/console.js",
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(script.contains("crypto.subtle"));
}

/// Without JavaScript the job page still shows the current values: the server renders the
/// charts' points and each live value from the stored series, and the stream's URL starts
/// after the last sample it rendered.
#[tokio::test]
async fn the_job_page_renders_its_telemetry_without_javascript() {
    let app = sqlite("console_no_js").await;
    let run = picked_up(&app, pinned()).await;
    for (util, watts) in [(20.0, 150.0), (60.0, 300.0), (85.5, 410.0)] {
        app.clock.advance_ms(1000);
        let reply = send(
            &app,
            &run,
            json!({"gpu_utilization_pct": util, "power_draw_watts": watts}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    let (status, _, page) = browse(
        &app,
        Method::GET,
        &format!("/console/jobs/{}", run.job),
        Some(&run.customer),
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("aria-live=\"polite\">RUNNING</output>"),
        "{page}"
    );
    assert!(
        page.contains("<output id=\"now-gpu_utilization_pct\" aria-live=\"polite\">85.5</output>"),
        "{page}"
    );
    assert!(
        page.contains("<output id=\"now-power_draw_watts\" aria-live=\"polite\">410.0</output>"),
        "{page}"
    );
    assert!(
        page.contains("<output id=\"sample-count\" aria-live=\"polite\">3</output>"),
        "{page}"
    );
    assert_eq!(
        page.matches("data-points=\"3\"").count(),
        4,
        "four charts of three points"
    );
    // The power chart's scale grew to its largest value; its line spans the width.
    assert!(
        page.contains("<span id=\"max-power_draw_watts\">410</span>"),
        "{page}"
    );
    assert!(page.contains("points=\"0.0,"), "{page}");
    assert!(
        page.contains(",0.0\"/></svg>"),
        "the largest value at the top: {page}"
    );
    // The last sample was received at the (manual) clock's now.
    let after_ms = {
        use gp4u_core::clock::Clock as _;
        app.clock.now_ms()
    };
    assert!(
        page.contains(&format!("data-after-ms=\"{after_ms}\"")),
        "{page}"
    );
    // Placement reasons rendered as a table with headers.
    assert!(page.contains("<th scope=\"col\">factor</th>"), "{page}");
}

/// The two API routes the console added, on both engines: `GET /api/admin/users` (admins
/// only, oldest first) and `GET /api/providers` (the caller's own nodes, providers only).
async fn the_routes_the_console_reads(app: TestApp) {
    let (first, _) = app.user("customer", None).await;
    let node = app.node(1, 2.0, "us-east-1").await;
    let other = app.node(2, 2.0, "us-east-1").await;
    let reply = app
        .call(Method::GET, paths::ADMIN_USERS, Some(&app.admin), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let ids: Vec<&str> = reply.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(
        ids.contains(&"usr_admin") && ids.contains(&first.as_str()),
        "{ids:?}"
    );
    let refused = app
        .call(Method::GET, paths::ADMIN_USERS, Some(&node.token), None)
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    for (provider, count) in [(&node, 1), (&other, 2)] {
        let reply = app
            .call(Method::GET, paths::PROVIDERS, Some(&provider.token), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let nodes = reply.body["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0]["node_id"], provider.node_id.as_str());
        assert_eq!(nodes[0]["gpus"].as_array().unwrap().len(), count);
    }
}

on_both_engines!(the_routes_the_console_reads);

/// A browser that mistypes a console address gets a page with a way back, not the API's JSON;
/// API clients keep the JSON error everywhere, and so does anything under /api/.
#[tokio::test]
async fn an_unknown_page_is_a_page_for_browsers_and_json_for_clients() {
    let app = sqlite("console-unknown-page").await;
    let html = [("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")];
    let (status, headers, body) =
        browse(&app, Method::GET, "/console/jobs", None, None, &html).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{headers:?}"
    );
    assert!(
        body.contains("Page not found") && body.contains("href=\"/\""),
        "{body}"
    );
    assert!(headers.contains_key("content-security-policy"));

    for (path, accept) in [
        ("/console/jobs", "application/json"),
        // Not a route: an unknown path under `/api` asked for by a browser.
        ("/api/nothing-here", "text/html"),
    ] {
        let (status, headers, body) =
            browse(&app, Method::GET, path, None, None, &[("accept", accept)]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{path} {accept}: {headers:?}"
        );
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"]["code"], "NOT_FOUND", "{path}");
    }
    // A form posted to a page that does not exist is not a page either.
    let (status, headers, _) = browse(
        &app,
        Method::POST,
        "/console/nothing",
        None,
        Some("a=b"),
        &html,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
}
