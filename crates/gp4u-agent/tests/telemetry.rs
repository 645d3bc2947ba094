//! The watchdog without Docker (`--runtime process`), against the fake control plane of
//! `support`: packets at the manifest's interval with the right ids, the final packet with the
//! exit code, kill orders and fencing obeyed at once, an older platform without the telemetry
//! route, and signed visibility challenges riding on telemetry replies, answered with the
//! job's evidence (forged ones refused). Network: loopback only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use ed25519_dalek::SigningKey;
use gp4u_attest::visibility::{answer_message, challenge_message, sign_base64, verify_base64};
use gp4u_proto::VisibilityChallenge;
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
    let _unmount = support::Unmount(data_dir.path().to_path_buf());
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
    let _unmount = support::Unmount(data_dir.path().to_path_buf());
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
    let _unmount = support::Unmount(data_dir.path().to_path_buf());
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

/// A challenge for `job` of `node`, issued `at`, signed with `key`.
fn challenge(key: &SigningKey, node: &str, job: &str, nonce: &str, at: i64) -> VisibilityChallenge {
    VisibilityChallenge {
        node_id: node.to_string(),
        job_id: job.to_string(),
        nonce: nonce.to_string(),
        issued_at_ms: at,
        deadline_ms: at + 60_000,
        signature: sign_base64(key, &challenge_message(node, job, nonce, at)),
    }
}

/// Waits until `job` has sent `more` packets beyond `since`.
async fn packets_beyond(platform: &support::Shared, job: &str, since: usize, more: usize) {
    assert!(
        eventually(Duration::from_secs(15), || platform
            .lock()
            .unwrap()
            .packets(job)
            .len()
            >= since + more)
        .await,
        "{job} sent no telemetry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visibility_challenges_ride_on_telemetry_and_are_answered_with_evidence() {
    let (server, platform) = fake_platform().await;
    let platform_key = SigningKey::from_bytes(&[7; 32]);
    platform.lock().unwrap().platform_key = Some(platform_key.clone());
    let job = format!("job_seen{}", std::process::id());
    platform.lock().unwrap().queue = vec![manifest(&job, "sleep 30 # seen", 1)];
    let data_dir = tempfile::tempdir().unwrap();
    let _unmount = support::Unmount(data_dir.path().to_path_buf());
    // No listener, no address: the agent is reached on its own connection.
    let agent_config = process_config(&server, data_dir.path());
    let (stop, stopping) = watch::channel(false);
    let agent = tokio::spawn(gp4u_agent::agent::run(agent_config.clone(), stopping));
    packets_beyond(&platform, &job, 0, 1).await;
    let (node_id, node_public, registration) = {
        let platform = platform.lock().unwrap();
        let body = platform.registration_bodies[0].clone();
        (
            platform.nodes[0].clone(),
            gp4u_attest::key::parse_public_key(body["public_key"].as_str().unwrap()).unwrap(),
            body,
        )
    };
    // The registration carries the host posture, and no endpoint.
    let posture = &registration["posture"];
    assert_eq!(posture["runtime"], "process", "{posture}");
    assert_eq!(posture["egress_filter"], "none", "{posture}");
    assert_eq!(posture["unfiltered_egress_allowed"], true, "{posture}");
    assert!(posture["max_scratch_gb"].as_f64().unwrap() > 0.0);
    assert!(registration.get("endpoint").is_none(), "{registration}");

    // Forged, misdirected and stale challenges get no answer.
    let intruder = SigningKey::from_bytes(&[9; 32]);
    let at = now_ms();
    let signed_for_another_job = {
        let mut other = challenge(&platform_key, &node_id, "job_other", &"dd".repeat(16), at);
        other.job_id = job.clone();
        other
    };
    for (what, refused) in [
        (
            "forged",
            challenge(&intruder, &node_id, &job, &"aa".repeat(16), at),
        ),
        (
            "another node",
            challenge(&platform_key, "node_other", &job, &"bb".repeat(16), at),
        ),
        (
            "stale",
            challenge(
                &platform_key,
                &node_id,
                &job,
                &"cc".repeat(16),
                at - 3_600_000,
            ),
        ),
        ("signed for another job", signed_for_another_job),
    ] {
        let since = platform.lock().unwrap().packets(&job).len();
        platform
            .lock()
            .unwrap()
            .challenges
            .insert(job.clone(), refused);
        // It went out in a reply, and the agent had time for one more packet.
        packets_beyond(&platform, &job, since, 2).await;
        assert!(
            platform.lock().unwrap().answers.is_empty(),
            "the {what} challenge was answered"
        );
    }
    // The platform's own is answered, with the job's evidence, signed by the node key.
    platform.lock().unwrap().challenges.insert(
        job.clone(),
        challenge(&platform_key, &node_id, &job, NONCE, now_ms()),
    );
    assert!(
        eventually(Duration::from_secs(10), || !platform
            .lock()
            .unwrap()
            .answers
            .is_empty())
        .await,
        "the challenge was not answered"
    );
    let answer = platform.lock().unwrap().answers[0].clone();
    assert_eq!(answer.nonce, NONCE);
    assert_eq!(
        (answer.node_id.as_str(), answer.job_id.as_str()),
        (node_id.as_str(), job.as_str())
    );
    let evidence = &answer.evidence;
    assert_eq!(
        evidence.env_job_id.as_deref(),
        Some(job.as_str()),
        "{evidence:?}"
    );
    assert!(
        evidence.container_id.starts_with("process:"),
        "{evidence:?}"
    );
    assert!(
        evidence.processes >= 1
            && evidence.cpu_ns.is_some()
            && evidence.init_started_ticks.is_some(),
        "{evidence:?}"
    );
    assert!(verify_base64(
        &node_public,
        &answer_message(
            &node_id,
            &job,
            NONCE,
            answer.issued_at_ms,
            &evidence.canonical().unwrap()
        ),
        &answer.signature
    ));
    stop.send(true).unwrap();
    agent.await.unwrap().unwrap();

    // A restart reports the host posture again, without registering again. Told to refuse,
    // the agent answers nothing while its telemetry goes on. (The process runtime's jobs end
    // with their agent: a new job.)
    let job = format!("job_hidden{}", std::process::id());
    platform.lock().unwrap().queue = vec![manifest(&job, "sleep 30 # hidden", 1)];
    let mut refusing = agent_config;
    refusing.refuse_visibility = true;
    let (stop, stopping) = watch::channel(false);
    let agent = tokio::spawn(gp4u_agent::agent::run(refusing, stopping));
    assert!(
        eventually(Duration::from_secs(20), || !platform
            .lock()
            .unwrap()
            .postures
            .is_empty())
        .await,
        "no posture report"
    );
    assert_eq!(platform.lock().unwrap().postures[0].0, node_id);
    assert_eq!(platform.lock().unwrap().registrations, 1);
    packets_beyond(&platform, &job, 0, 1).await;
    let since = platform.lock().unwrap().packets(&job).len();
    platform.lock().unwrap().challenges.insert(
        job.clone(),
        challenge(&platform_key, &node_id, &job, &"ee".repeat(16), now_ms()),
    );
    packets_beyond(&platform, &job, since, 3).await;
    assert_eq!(
        platform.lock().unwrap().answers.len(),
        1,
        "the refusing agent answered"
    );
    stop.send(true).unwrap();
    agent.await.unwrap().unwrap();
}
