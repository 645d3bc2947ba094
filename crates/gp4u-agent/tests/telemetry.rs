//! The watchdog and the visibility endpoint without Docker (`--runtime process`), against the
//! fake control plane of `support`: packets at the manifest's interval with the right ids,
//! the final packet with the exit code, kill orders and fencing obeyed at once, an older
//! platform without the telemetry route, and signed visibility challenges answered (forged
//! ones refused). Network: loopback only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use gp4u_attest::visibility::{answer_message, challenge_message, sign_base64, verify_base64};
use serde_json::{Value, json};
use support::{
    eventually, fake_platform, finals, manifest, process_alive, process_config, stopped_after_order,
};
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_flow_at_the_interval_and_the_final_one_ends_the_job() {
    let (server, platform) = fake_platform().await;
    let tag = std::process::id();
    let (ticking, busy, killed, fenced, forgotten) = (
        format!("job_tick{tag}"),
        format!("job_busy{tag}"),
        format!("job_kill{tag}"),
        format!("job_fence{tag}"),
        format!("job_forget{tag}"),
    );
    // Distinct sleep lengths mark each job's process (`exec`: the sleep is the job's process).
    let kill_marker = format!("sleep 301.{tag}");
    let fence_marker = format!("sleep 302.{tag}");
    let forget_marker = format!("sleep 303.{tag}");
    {
        let mut platform = platform.lock().unwrap();
        platform.telemetry_kill.push(killed.clone());
        platform.fenced.push(fenced.clone());
        platform.telemetry_forgotten.push(forgotten.clone());
        platform.queue = vec![
            manifest(&ticking, "sleep 4.5; exit 5", 1),
            manifest(&busy, "yes > /dev/null & p=$!; sleep 4; kill $p", 1),
            manifest(&killed, &format!("exec {kill_marker}"), 3),
            manifest(&fenced, &format!("exec {fence_marker}"), 3),
            manifest(&forgotten, &format!("exec {forget_marker}"), 3),
        ];
    }
    let data_dir = tempfile::tempdir().unwrap();
    let (stop, stopping) = watch::channel(false);
    let agent = tokio::spawn(gp4u_agent::agent::run(
        process_config(&server, data_dir.path()),
        stopping,
    ));
    let done = finals(
        &platform,
        &[ticking.as_str(), busy.as_str()],
        Duration::from_secs(60),
    )
    .await;
    let node_id = platform.lock().unwrap().nodes[0].clone();

    // The final packet carries the exit code; no "exited" status report is sent any more.
    assert_eq!(done[&ticking].exit_code, Some(5), "{done:?}");
    let packets = platform.lock().unwrap().packets(&ticking);
    let (last_at, last) = packets.last().unwrap().clone();
    assert_eq!((last.is_final, last.exit_code), (Some(true), Some(5)));
    assert!(
        !platform
            .lock()
            .unwrap()
            .reports
            .iter()
            .any(|(job, report)| *job == ticking && report.status == "exited")
    );
    // Before it: packets every second (generous bounds), with the job's and node's ids; the
    // process runtime has no namespace: no IPs or ports, outbound 0. Emulated GPU figures.
    let running: Vec<_> = packets
        .iter()
        .filter(|(at, packet)| packet.is_final.is_none() && *at < last_at)
        .collect();
    assert!(running.len() >= 3, "{} packets", running.len());
    for pair in running.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(500) && gap <= Duration::from_millis(2500),
            "{gap:?}"
        );
    }
    for (_, packet) in &running {
        assert_eq!(packet.job_id, ticking);
        assert_eq!(packet.node_id, node_id);
        assert_eq!(packet.exit_code, None);
        assert_eq!(packet.unique_dest_ips, None);
        assert_eq!(packet.dest_ports, None);
        assert_eq!(packet.outbound_bytes_per_sec, 0.0);
        assert_eq!(packet.vram_allocated_gb, 24.0);
        assert!(packet.inferred_pattern.is_some());
        assert_eq!(
            packet.foreign_gpu_processes, None,
            "emulated: nothing to see"
        );
    }
    // The emulated GPU follows the job's CPU use: `yes` keeps one core busy.
    let busy_packets = platform.lock().unwrap().packets(&busy);
    let peak = busy_packets
        .iter()
        .map(|(_, packet)| packet.gpu_utilization_pct)
        .fold(0.0, f64::max);
    assert!(peak >= 50.0, "emulated utilization peaked at {peak}");
    assert!(
        busy_packets
            .iter()
            .any(|(_, packet)| packet.power_draw_watts > 30.0 && packet.temperature_c > 35.0)
    );
    assert_eq!(done[&busy].exit_code, Some(0));

    // A kill order, a 409 fence and a 404 each stop the job at once (well before the next
    // packet would be due), and nothing more is sent for it.
    for (job, marker) in [
        (&killed, &kill_marker),
        (&fenced, &fence_marker),
        (&forgotten, &forget_marker),
    ] {
        let took = stopped_after_order(&platform, job, marker).await;
        assert!(took < Duration::from_secs(20), "{job}: checked late");
    }
    // The first process check above started right after the order: the kill is fast. Now
    // give a slow agent every chance to send more, then check it did not.
    tokio::time::sleep(Duration::from_secs(4)).await;
    {
        let platform = platform.lock().unwrap();
        for job in [&killed, &fenced, &forgotten] {
            let ordered = platform.kill_answered[job];
            let after: Vec<_> = platform
                .packets(job)
                .into_iter()
                .filter(|(at, _)| *at > ordered)
                .collect();
            assert!(after.is_empty(), "{job}: sent after the kill: {after:?}");
            assert!(
                !platform
                    .reports
                    .iter()
                    .any(|(id, report)| id == job && report.status != "running"),
                "{job}: reported after the kill"
            );
        }
    }
    stop.send(true).unwrap();
    agent.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_order_stops_a_process_well_within_one_interval() {
    let (server, platform) = fake_platform().await;
    let job = format!("job_quick{}", std::process::id());
    let marker = format!("sleep 304.{}", std::process::id());
    {
        let mut platform = platform.lock().unwrap();
        platform.telemetry_kill.push(job.clone());
        platform.queue = vec![manifest(&job, &format!("exec {marker}"), 6)];
    }
    let data_dir = tempfile::tempdir().unwrap();
    let (stop, stopping) = watch::channel(false);
    let agent = tokio::spawn(gp4u_agent::agent::run(
        process_config(&server, data_dir.path()),
        stopping,
    ));
    assert!(
        eventually(Duration::from_secs(30), || platform
            .lock()
            .unwrap()
            .kill_answered
            .contains_key(&job))
        .await
    );
    let ordered = platform.lock().unwrap().kill_answered[&job];
    assert!(eventually(Duration::from_secs(20), || !process_alive(&marker)).await);
    let took = ordered.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "killed {took:?} after the order; the interval is 6 s"
    );
    assert_eq!(platform.lock().unwrap().packets(&job).len(), 1);
    stop.send(true).unwrap();
    agent.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_platform_without_the_telemetry_route_still_hears_the_end() {
    let (server, platform) = fake_platform().await;
    let job = format!("job_legacy{}", std::process::id());
    {
        let mut platform = platform.lock().unwrap();
        platform.no_telemetry_route = true;
        platform.queue = vec![manifest(&job, "sleep 2.5; exit 3", 1)];
    }
    let data_dir = tempfile::tempdir().unwrap();
    let (stop, stopping) = watch::channel(false);
    let agent = tokio::spawn(gp4u_agent::agent::run(
        process_config(&server, data_dir.path()),
        stopping,
    ));
    let done = finals(&platform, &[job.as_str()], Duration::from_secs(30)).await;
    assert_eq!(
        (done[&job].status.as_str(), done[&job].exit_code),
        ("exited", Some(3))
    );
    // Kept alive with "running" reports meanwhile.
    let running = platform
        .lock()
        .unwrap()
        .reports
        .iter()
        .filter(|(id, report)| *id == job && report.status == "running")
        .count();
    assert!(running >= 2, "{running} running reports");
    stop.send(true).unwrap();
    agent.await.unwrap().unwrap();
}

const NONCE: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

async fn challenge(endpoint: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{endpoint}/gp4u/visibility"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visibility_challenges_are_answered_and_the_endpoint_announced() {
    let (server, platform) = fake_platform().await;
    let platform_key = SigningKey::from_bytes(&[7; 32]);
    platform.lock().unwrap().platform_key = Some(platform_key.clone());
    let data_dir = tempfile::tempdir().unwrap();
    let mut agent_config = process_config(&server, data_dir.path());
    agent_config.listen = Some("127.0.0.1:0".parse().unwrap());
    let (stop, stopping) = watch::channel(false);
    let agent = tokio::spawn(gp4u_agent::agent::run(agent_config.clone(), stopping));
    assert!(
        eventually(Duration::from_secs(20), || platform
            .lock()
            .unwrap()
            .registrations
            == 1)
        .await
    );
    let (node_id, endpoint, node_public) = {
        let platform = platform.lock().unwrap();
        let body = &platform.registration_bodies[0];
        (
            platform.nodes[0].clone(),
            body["endpoint"]
                .as_str()
                .expect("registered with its endpoint")
                .to_string(),
            gp4u_attest::key::parse_public_key(body["public_key"].as_str().unwrap()).unwrap(),
        )
    };
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
    assert!(
        platform.lock().unwrap().endpoints.is_empty(),
        "registration said it"
    );
    let signed = |key: &SigningKey, node: &str, at: i64| {
        json!({"node_id": node, "nonce": NONCE, "issued_at_ms": at,
               "signature": sign_base64(key, &challenge_message(node, NONCE, at))})
    };
    let at = now_ms();
    // The endpoint serves as soon as the agent registered; retry briefly for the start-up.
    let started = Instant::now();
    let (status, answer) = loop {
        let (status, answer) = challenge(&endpoint, signed(&platform_key, &node_id, at)).await;
        if status == 200 || started.elapsed() > Duration::from_secs(10) {
            break (status, answer);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["node_id"], node_id.as_str());
    assert_eq!(answer["nonce"], NONCE);
    assert!(verify_base64(
        &node_public,
        &answer_message(&node_id, NONCE, at),
        answer["signature"].as_str().unwrap()
    ));
    // Forged, misdirected, stale or malformed challenges: 403 CHALLENGE_REFUSED.
    let intruder = SigningKey::from_bytes(&[9; 32]);
    for (what, body) in [
        ("forged", signed(&intruder, &node_id, at)),
        ("another node", signed(&platform_key, "node_other", at)),
        ("stale", signed(&platform_key, &node_id, at - 3_600_000)),
        ("not a challenge", json!({"hello": "world"})),
        (
            "bad nonce",
            json!({"node_id": node_id, "nonce": "zz", "issued_at_ms": at,
                   "signature": sign_base64(&platform_key, &challenge_message(&node_id, "zz", at))}),
        ),
    ] {
        let (status, refused) = challenge(&endpoint, body).await;
        assert_eq!(status, 403, "{what}: {refused}");
        assert_eq!(refused["error"]["code"], "CHALLENGE_REFUSED", "{what}");
        assert!(refused["error"]["message"].is_string(), "{what}");
    }
    let huge = reqwest::Client::new()
        .post(format!("{endpoint}/gp4u/visibility"))
        .header("content-type", "application/json")
        .body(vec![b' '; 16 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status().as_u16(), 413);
    stop.send(true).unwrap();
    agent.await.unwrap().unwrap();

    // A restart listens again (another port) and tells the platform; it does not register
    // again, and still checks challenges against the platform key it kept.
    let (stop, stopping) = watch::channel(false);
    let agent = tokio::spawn(gp4u_agent::agent::run(agent_config, stopping));
    assert!(
        eventually(Duration::from_secs(20), || !platform
            .lock()
            .unwrap()
            .endpoints
            .is_empty())
        .await,
        "no endpoint update"
    );
    let (updated_node, updated) = platform.lock().unwrap().endpoints[0].clone();
    assert_eq!(updated_node, node_id);
    assert!(updated.starts_with("http://127.0.0.1:"), "{updated}");
    assert_eq!(platform.lock().unwrap().registrations, 1);
    let (status, _) = challenge(&updated, signed(&platform_key, &node_id, now_ms())).await;
    assert_eq!(status, 200);
    let (status, _) = challenge(&updated, signed(&intruder, &node_id, now_ms())).await;
    assert_eq!(status, 403);
    stop.send(true).unwrap();
    agent.await.unwrap().unwrap();
}
