//! The console's pages (their `main`), from the API's answers. Every value goes through
//! [`escape`] or [`html::json_block`]; the pages read whole without JavaScript, which only
//! updates the live values and checks the ledger.

use gp4u_proto::{ChambersView, EndedBy, FailureReason, JobView, ProviderNodeView, UserView};
use serde_json::Value;

use super::html::{self, CHART_POINTS, SERIES, escape, json_block};

/// The sign-in form; `next` is where it goes after (a path [`super::safe_next`] allowed).
pub fn sign_in(message: Option<&str>, next: &str) -> String {
    let alert = message.map_or_else(String::new, |message| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", escape(message))
    });
    format!(
        "<h1>Sign in</h1>{alert}\
         <form method=\"post\" action=\"/console/sign-in\" class=\"sign-in\">\
         <label for=\"token\">Your GP4U token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required \
         aria-describedby=\"token-help\">\
         <p id=\"token-help\" class=\"muted\">The token <code>gp4u demo</code> printed, or one an \
         operator issued with <code>gp4u admin token</code>. It is kept in an HttpOnly cookie \
         for this site only, never in the page.</p>\
         <input type=\"hidden\" name=\"next\" value=\"{next}\">\
         <button type=\"submit\">Sign in</button></form>",
        next = escape(next),
    )
}

fn money(value: f64) -> String {
    format!("{value:.2}")
}

fn opt(value: Option<&str>) -> String {
    value.map_or_else(|| "<span class=\"muted\">—</span>".into(), escape)
}

/// A page of the caller's jobs; `paged` when it is not the first (a link back to the newest).
pub fn jobs(list: &gp4u_proto::JobList, paged: bool) -> String {
    let jobs = &list.jobs;
    let mut pager = Vec::new();
    if paged {
        pager.push("<a href=\"/\">Newest jobs</a>".to_string());
    }
    if let Some(next) = &list.next_before {
        pager.push(format!(
            "<a href=\"/?before={}\" rel=\"next\">Older jobs</a>",
            escape(&gp4u_proto::paths::segment(next))
        ));
    }
    let pager = if pager.is_empty() {
        String::new()
    } else {
        format!(
            "<nav aria-label=\"Pages of jobs\" class=\"pager\">{}</nav>",
            pager.join(" · ")
        )
    };
    if jobs.is_empty() {
        return format!(
            "<h1>Your jobs</h1><p>No jobs {}. Submit one with <code>gp4u run</code>.</p>{pager}",
            if paged { "older than these" } else { "yet" }
        );
    }
    let mut rows = String::new();
    for job in jobs {
        let gpu = job
            .gpu
            .as_ref()
            .map(|gpu| format!("{} ({})", gpu.name, gpu.region));
        rows.push_str(&format!(
            "<tr><th scope=\"row\"><a href=\"/console/jobs/{id_attr}\">{id}</a></th>\
             <td>{name}</td><td><span class=\"state state-{state_class}\">{state}</span></td>\
             <td>{gpu}</td><td>{created}</td><td class=\"num\">{cost}</td></tr>",
            id_attr = escape(&job.id),
            id = escape(&job.id),
            name = escape(&job.name),
            state_class = escape(&job.status.as_str().to_ascii_lowercase()),
            state = escape(job.status.as_str()),
            gpu = opt(gpu.as_deref()),
            created = escape(&job.created_at),
            cost = money(job.cost_estimate),
        ));
    }
    format!(
        "<h1>Your jobs</h1><div class=\"scroll\"><table id=\"jobs\">\
         <caption>Newest first; cost is the estimate until the job settles</caption>\
         <thead><tr><th scope=\"col\">Job</th><th scope=\"col\">Name</th>\
         <th scope=\"col\">State</th><th scope=\"col\">GPU</th><th scope=\"col\">Created</th>\
         <th scope=\"col\">Cost</th></tr></thead><tbody>{rows}</tbody></table></div>{pager}"
    )
}

/// What the job page shows, each optional part with why it is missing.
pub struct JobPage<'a> {
    pub job: &'a JobView,
    pub csrf: &'a str,
    pub telemetry: Result<Value, String>,
    pub settlement: Result<Value, String>,
    pub proofs: Result<Value, String>,
    pub ledger: Result<Value, String>,
}

fn unavailable(reason: &str) -> String {
    format!("<p class=\"muted\">{}</p>", escape(reason))
}

pub fn job(page: &JobPage<'_>) -> String {
    let job = page.job;
    let mut out = String::new();
    out.push_str(&format!(
        "<h1>Job <span class=\"job-name\">{name}</span></h1>\
         <p class=\"muted\">{id}</p>",
        name = escape(&job.name),
        id = escape(&job.id),
    ));
    // Facts.
    let gpu = job
        .gpu
        .as_ref()
        .map(|gpu| format!("{} ({})", gpu.name, gpu.region));
    out.push_str(
        "<section aria-labelledby=\"h-state\"><h2 id=\"h-state\">State</h2><dl class=\"facts\">",
    );
    let facts: [(&str, String); 11] = [
        (
            "State",
            format!(
                "<output id=\"job-status\" aria-live=\"polite\">{}</output>",
                escape(job.status.as_str())
            ),
        ),
        (
            "Failure",
            opt(job.failure_reason.as_ref().map(FailureReason::as_str)),
        ),
        ("Ended by", opt(job.ended_by.as_ref().map(EndedBy::as_str))),
        (
            "Exit code",
            opt(job.exit_code.map(|code| code.to_string()).as_deref()),
        ),
        ("GPU", opt(gpu.as_deref())),
        ("Node", opt(job.node_id.as_deref())),
        (
            "Image",
            escape(&format!("{}@{}", job.docker_image, job.docker_image_sha256)),
        ),
        ("Created", escape(&job.created_at)),
        ("Started", opt(job.started_at.as_deref())),
        ("Ended", opt(job.ended_at.as_deref())),
        (
            "Cost estimate",
            format!(
                "{} ({} per hour)",
                money(job.cost_estimate),
                money(job.price_per_hour)
            ),
        ),
    ];
    for (label, value) in facts {
        out.push_str(&format!("<dt>{}</dt><dd>{value}</dd>", escape(label)));
    }
    out.push_str("</dl>");
    if !job.status.is_terminal() {
        out.push_str(&format!(
            "<form method=\"post\" action=\"/console/jobs/{id}/cancel\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\" class=\"danger\">Cancel this job</button></form>",
            id = escape(&job.id),
            csrf = escape(page.csrf),
        ));
    }
    out.push_str("</section>");

    // Placement.
    out.push_str("<section aria-labelledby=\"h-placement\"><h2 id=\"h-placement\">Placement</h2>");
    match &job.placement {
        Some(placement) => {
            out.push_str(&format!(
                "<p>Score <strong id=\"placement-score\">{}</strong> of 100</p>",
                json_block(&placement["score"])
            ));
            match placement["reasons"].as_array() {
                Some(reasons) if !reasons.is_empty() => {
                    out.push_str(&html::json_table(
                        reasons,
                        Some("Why this GPU: each factor Atlas weighed"),
                    ));
                }
                _ => out.push_str(&unavailable("No reasons recorded.")),
            }
        }
        None => out.push_str(&unavailable("Not placed yet.")),
    }
    out.push_str("</section>");

    // Live telemetry.
    out.push_str(&telemetry_section(job, &page.telemetry));

    // Anomalies.
    out.push_str("<section aria-labelledby=\"h-anomalies\"><h2 id=\"h-anomalies\">Anomalies</h2>");
    match job.anomalies.as_array() {
        Some(items) if !items.is_empty() => {
            out.push_str(&html::json_table(
                items,
                Some("What Tutela flagged, by rule"),
            ));
        }
        _ => out.push_str(&unavailable("None flagged.")),
    }
    out.push_str("</section>");

    // Energy and carbon.
    out.push_str(&format!(
        "<section aria-labelledby=\"h-energy\"><h2 id=\"h-energy\">Energy and carbon</h2>\
         <dl class=\"facts\"><dt>Energy</dt><dd>{energy}</dd><dt>Carbon</dt><dd>{carbon}</dd>\
         <dt>Renewable share (declared)</dt><dd>{renewable}</dd>\
         <dt>Carbon-credit eligible</dt><dd>{eligible}</dd></dl></section>",
        energy = opt(job.energy_kwh.map(|kwh| format!("{kwh:.4} kWh")).as_deref()),
        carbon = opt(job
            .carbon_kg
            .map(|kg| format!("{kg:.4} kg CO₂e"))
            .as_deref()),
        renewable = opt(job
            .renewable_pct
            .map(|pct| format!("{pct:.0} %"))
            .as_deref()),
        eligible = opt(job
            .carbon_credit_eligible
            .map(|yes| if yes { "yes" } else { "no" })),
    ));

    // Proofs and settlement.
    out.push_str("<section aria-labelledby=\"h-proofs\"><h2 id=\"h-proofs\">Proofs</h2>");
    match &page.proofs {
        Ok(proofs) => out.push_str(&json_block(proofs)),
        Err(reason) => out.push_str(&unavailable(reason)),
    }
    out.push_str("</section><section aria-labelledby=\"h-settlement\"><h2 id=\"h-settlement\">Settlement</h2>");
    match &page.settlement {
        Ok(settlement) => out.push_str(&json_block(settlement)),
        Err(reason) => out.push_str(&unavailable(&format!("Not settled yet ({reason})."))),
    }
    out.push_str("</section>");

    out.push_str(&ledger_section(&page.ledger));
    out
}

fn telemetry_section(job: &JobView, telemetry: &Result<Value, String>) -> String {
    let mut out = String::from(
        "<section aria-labelledby=\"h-telemetry\"><h2 id=\"h-telemetry\">Telemetry</h2>",
    );
    let samples: Vec<Value> = match telemetry {
        Ok(value) => value["samples"].as_array().cloned().unwrap_or_default(),
        Err(reason) => {
            out.push_str(&unavailable(reason));
            Vec::new()
        }
    };
    let emulated = telemetry
        .as_ref()
        .ok()
        .and_then(|value| value["emulated"].as_bool())
        .unwrap_or(false);
    if emulated {
        out.push_str(
            "<p class=\"muted\">Emulated GPU: values are derived from CPU use, not measured.</p>",
        );
    }
    let shown = &samples[samples.len().saturating_sub(CHART_POINTS)..];
    let last_ms = samples
        .last()
        .and_then(|sample| sample["at"].as_str())
        .and_then(|at| {
            time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|at| i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0));
    out.push_str(&format!(
        "<p>Samples: <output id=\"sample-count\" aria-live=\"polite\">{count}</output>; \
         last received <output id=\"sample-last\">{last}</output>. \
         <span id=\"live-status\" class=\"muted\" aria-live=\"polite\">{live}</span></p>",
        count = samples.len(),
        last = opt(samples.last().and_then(|sample| sample["at"].as_str())),
        live = if job.status.is_terminal() {
            "The job has ended."
        } else {
            "Live updates need JavaScript; reload for the latest values."
        },
    ));
    out.push_str(&format!(
        "<div id=\"charts\" class=\"charts\" data-job=\"{job}\" data-live=\"{live}\" data-after-ms=\"{after}\" data-count=\"{count}\">",
        job = escape(&job.id),
        live = !job.status.is_terminal(),
        after = last_ms.map_or_else(String::new, |ms| ms.to_string()),
        count = samples.len(),
    ));
    for series in &SERIES {
        let values: Vec<f64> = shown
            .iter()
            .filter_map(|sample| sample[series.field].as_f64())
            .collect();
        out.push_str(&html::chart(series, &values));
    }
    out.push_str("</div></section>");
    out
}

fn ledger_section(ledger: &Result<Value, String>) -> String {
    let mut out =
        String::from("<section aria-labelledby=\"h-ledger\"><h2 id=\"h-ledger\">Ledger</h2>");
    let ledger = match ledger {
        Ok(ledger) => ledger,
        Err(reason) => {
            out.push_str(&unavailable(reason));
            out.push_str("</section>");
            return out;
        }
    };
    let entries = ledger["entries"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!(
        "<p>Checkpoint: tree size <strong>{size}</strong>, signed by <code class=\"wrap\">{key}</code> \
         (the key as this server serves it: compare it with one you saved, e.g. by <code>gp4u verify</code>). \
         {pending}</p>",
        size = json_block(&ledger["tree_size"]),
        key = json_block(&ledger["public_key"]),
        pending = match ledger["pending"].as_u64() {
            Some(0) | None => String::new(),
            Some(count) => format!("{count} entries of this job are not sealed into a checkpoint yet."),
        },
    ));
    out.push_str(
        "<p>Checked in this browser (WebCrypto): each entry's leaf hash, its inclusion proof up \
         to the checkpoint's root (RFC 9162), and the checkpoint's Ed25519 signature. \
         <output id=\"ledger-status\" data-result=\"unchecked\" aria-live=\"polite\">Not checked: \
         the check runs in JavaScript.</output></p>",
    );
    if entries.is_empty() {
        out.push_str(&unavailable("No entries of this job are sealed yet."));
    } else {
        out.push_str(
            "<div class=\"scroll\"><table id=\"ledger-entries\"><caption>This job's entries</caption>\
             <thead><tr><th scope=\"col\">Index</th><th scope=\"col\">Kind</th>\
             <th scope=\"col\">Leaf hash</th><th scope=\"col\">Proof length</th>\
             <th scope=\"col\">Check</th></tr></thead><tbody>",
        );
        for entry in &entries {
            let index = entry["index"]
                .as_u64()
                .map_or_else(String::new, |index| index.to_string());
            out.push_str(&format!(
                "<tr><th scope=\"row\">{index}</th><td>{kind}</td><td><code class=\"wrap\">{leaf}</code></td>\
                 <td class=\"num\">{proof}</td><td><output id=\"entry-check-{index}\">not checked</output></td></tr>",
                kind = json_block(&entry["kind"]),
                leaf = json_block(&entry["leaf_hash"]),
                proof = entry["inclusion_proof"].as_array().map_or(0, Vec::len),
            ));
        }
        out.push_str("</tbody></table></div>");
    }
    out.push_str(&format!(
        "<script type=\"application/json\" id=\"ledger-data\">{}</script></section>",
        html::json_for_script(ledger)
    ));
    out
}

pub fn provider(nodes: &[ProviderNodeView], balance: &Result<Value, String>) -> String {
    let mut out = String::from("<h1>Your provider nodes</h1>");
    if let Ok(balance) = balance {
        out.push_str("<section aria-labelledby=\"h-balance\"><h2 id=\"h-balance\">Balance</h2>");
        out.push_str(&json_block(balance));
        out.push_str("</section>");
    }
    if nodes.is_empty() {
        out.push_str("<p>No nodes registered yet: start <code>gp4u agent</code>.</p>");
        return out;
    }
    for node in nodes {
        let (completed, dropped) = node.record.as_ref().map_or((0, 0), |record| {
            (record.completed_jobs, record.dropped_jobs)
        });
        out.push_str(&format!(
            "<section aria-labelledby=\"h-node-{id}\"><h2 id=\"h-node-{id}\">Node {id}</h2>\
             <dl class=\"facts\"><dt>Status</dt><dd>{status}</dd><dt>Region</dt><dd>{region}</dd>\
             <dt>Stake</dt><dd>{stake}</dd><dt>Trust score</dt><dd>{trust:.1}</dd>\
             <dt>Jobs completed</dt><dd>{completed}</dd><dt>Jobs dropped</dt><dd>{dropped}</dd>\
             <dt>Visibility</dt><dd>{visibility}</dd></dl>",
            id = escape(&node.node_id),
            status = escape(node.status.as_str()),
            region = escape(&node.region),
            stake = money(node.stake),
            trust = node.trust_score,
            visibility = escape(&node.visibility),
        ));
        let gpus: Vec<Value> = node
            .gpus
            .iter()
            .filter_map(|gpu| serde_json::to_value(gpu).ok())
            .collect();
        out.push_str(&html::json_table(&gpus, Some("GPUs")));
        if !node.slashes.is_empty() {
            let slashes: Vec<Value> = node
                .slashes
                .iter()
                .filter_map(|slash| serde_json::to_value(slash).ok())
                .collect();
            out.push_str(&html::json_table(&slashes, Some("Slashes")));
        }
        out.push_str("</section>");
    }
    out
}

pub fn admin(
    users: &Result<Vec<UserView>, String>,
    chambers: &Result<ChambersView, String>,
) -> String {
    let mut out = String::from(
        "<h1>Operations</h1><section aria-labelledby=\"h-users\"><h2 id=\"h-users\">Users</h2>",
    );
    match users {
        Ok(users) => {
            out.push_str(
                "<div class=\"scroll\"><table id=\"users\"><thead><tr><th scope=\"col\">User</th>\
                 <th scope=\"col\">Name</th><th scope=\"col\">Role</th><th scope=\"col\">Active</th>\
                 <th scope=\"col\">Credit</th></tr></thead><tbody>",
            );
            for user in users {
                out.push_str(&format!(
                    "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
                    escape(&user.id),
                    escape(&user.name),
                    escape(user.role.as_str()),
                    if user.active { "yes" } else { "suspended" },
                    money(user.credit),
                ));
            }
            out.push_str("</tbody></table></div>");
        }
        Err(reason) => out.push_str(&unavailable(reason)),
    }
    out.push_str(
        "</section><section aria-labelledby=\"h-chambers\"><h2 id=\"h-chambers\">Chambers</h2>",
    );
    match chambers {
        Ok(view) => {
            out.push_str(&format!(
                "<p>Bus: {}; outbox head {}; unsequenced {}.</p>",
                escape(&view.bus),
                view.head,
                view.unsequenced
            ));
            let rows: Vec<Value> = view
                .chambers
                .iter()
                .filter_map(|chamber| serde_json::to_value(chamber).ok())
                .collect();
            out.push_str(&html::json_table(
                &rows,
                Some("Each chamber's cursor and lag"),
            ));
        }
        Err(reason) => out.push_str(&unavailable(reason)),
    }
    out.push_str("</section>");
    out
}
