//! A customer's jobs in pages (`GET /api/jobs?limit=&before=`, the console's "Older jobs"):
//! every job once, newest first, through `gp4u-client`; a cursor that is not one of the
//! caller's jobs is refused saying what to pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

use axum::http::{Method, StatusCode};
use gp4u_store::Engine;
use support::*;

async fn jobs_come_in_pages(app: TestApp) {
    let gpu = app.gpu(1.0).await;
    let (_, customer) = app.user("customer", None).await;
    let (_, other) = app.user("customer", None).await;
    let mut submitted = Vec::new();
    // More than a console page (50), slower than the submission rate limit (30 a minute).
    for _ in 0..51 {
        submitted.push(app.submit(&customer, job_body(&gpu)).await);
        app.clock.advance_ms(3_000);
    }
    let theirs = app.submit(&other, job_body(&gpu)).await;
    let served = app.serve().await;
    let client = served.client(&customer);

    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = client.jobs_page(Some(20), before.as_deref()).await.unwrap();
        pages += 1;
        assert!(page.jobs.len() <= 20);
        seen.extend(page.jobs.iter().map(|job| job.id.clone()));
        match page.next_before {
            Some(next) => {
                assert_eq!(Some(&next), page.jobs.last().map(|job| &job.id));
                before = Some(next);
            }
            None => break,
        }
    }
    submitted.reverse();
    assert_eq!(seen, submitted, "every job once, newest first");
    assert_eq!(
        pages, 3,
        "20 + 20 + 11, and the last page says there is no more"
    );
    // A page that ends exactly at the last job says so (no empty page to follow).
    let all = client.jobs_page(Some(51), None).await.unwrap();
    assert_eq!((all.jobs.len(), all.next_before), (51, None));

    // Another customer's job, a malformed id, and a job that does not exist are no cursor.
    for cursor in [theirs.as_str(), "job_nope", "not an id"] {
        let refused = client.jobs_page(Some(2), Some(cursor)).await.unwrap_err();
        assert_eq!(
            (refused.status(), refused.code()),
            (Some(400), Some("INVALID_QUERY")),
            "{cursor}: {refused}"
        );
        assert!(refused.to_string().contains("next_before"), "{refused}");
    }

    // The console's list links to the older page, and that page back to the newest.
    let first = app
        .raw(
            Method::GET,
            "/",
            None,
            Vec::new(),
            &[
                ("cookie", &format!("gp4u_session={customer}")),
                ("accept", "text/html"),
            ],
        )
        .await;
    assert_eq!(first.0, StatusCode::OK);
    let first = String::from_utf8(first.2).unwrap();
    // The 50th newest is where the next page starts after.
    let link = format!("href=\"/?before={}\" rel=\"next\"", seen[49]);
    assert!(first.contains(&link), "{first}");
    assert!(
        !first.contains(&seen[50]),
        "the oldest job is on the next page"
    );
    let older = app
        .raw(
            Method::GET,
            &format!("/?before={}", seen[49]),
            None,
            Vec::new(),
            &[
                ("cookie", &format!("gp4u_session={customer}")),
                ("accept", "text/html"),
            ],
        )
        .await;
    assert_eq!(older.0, StatusCode::OK);
    let older = String::from_utf8(older.2).unwrap();
    assert!(older.contains("href=\"/\">Newest jobs</a>"), "{older}");
    assert!(
        older.contains(&seen[50]) && !older.contains("rel=\"next\""),
        "{older}"
    );
}

on_both_engines!(jobs_come_in_pages);
