//! A node's jobs post their telemetry of one period together, as one array (`--runtime
//! process`, fake control plane of `support`): fewer requests than packets, each job's item
//! acted on as its own reply (a kill order or a fence stops only that job, at once), and a
//! platform without arrays still served, one packet per request. Network: loopback only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::{
    Shared, fake_platform, finals, manifest, process_alive, process_config, stopped_after_order,
};
use tokio::sync::watch;

/// (requests, packets) of the jobs' running (not final) telemetry accepted by the platform,
/// and the array requests' sizes.
fn running_counts(platform: &Shared, jobs: &[&str]) -> (usize, usize, Vec<usize>) {
    let platform = platform.lock().unwrap();
    let mut requests = 0;
    let mut packets = 0;
    let mut arrays = Vec::new();
    for request in platform.telemetry_requests.iter().filter(|r| !r.refused) {
        let ours = request
            .jobs
            .iter()
            .zip(&request.finals)
            .filter(|(job, is_final)| jobs.contains(&job.as_str()) && !**is_final)
            .count();
        if ours == 0 {
            continue;
        }
        requests += 1;
        packets += ours;
        if request.array {
            arrays.push(ours);
        }
    }
    (requests, packets, arrays)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_jobs_post_their_packets_of_a_period_as_one_array() {
    let (server, platform) = fake_platform().await;
    let tag = std::process::id();
    let jobs: Vec<String> = (0..3).map(|n| format!("job_batch{n}x{tag}")).collect();
    platform.lock().unwrap().queue = jobs
        .iter()
        .enumerate()
        .map(|(n, job)| manifest(job, &format!("sleep 5.5; exit {n}"), 1))
        .collect();
    let data_dir = tempfile::tempdir().unwrap();
    let _unmount = support::Unmount(data_dir.path().to_path_buf());
    let (stop, stopping) = watch::channel(false);
    let agent = tokio::spawn(gp4u_agent::agent::run(
        process_config(&server, data_dir.path()),
        stopping,
    ));
    let names: Vec<&str> = jobs.iter().map(String::as_str).collect();
    let done = finals(&platform, &names, Duration::from_secs(60)).await;
    for (n, job) in jobs.iter().enumerate() {
        assert_eq!(
            done.get(job).and_then(|report| report.exit_code),
            Some(i32::try_from(n).unwrap()),
            "{done:?}"
        );
    }
    let (requests, packets, arrays) = running_counts(&platform, &names);
    eprintln!(
        "BATCH-MEASURE: {packets} running packets of {} jobs in {requests} requests ({} arrays of sizes {arrays:?})",
        jobs.len(),
        arrays.len()
    );
    // Each job posted several times (about once a second for 5.5 s)...
    for job in &jobs {
        let running = platform
            .lock()
            .unwrap()
            .packets(job)
            .iter()
            .filter(|(_, packet)| packet.is_final.is_none())
            .count();
        assert!(running >= 3, "{job}: {running} packets");
    }
    // ...mostly together: fewer requests than packets, arrays of several jobs, at least one
    // carrying all three (generous: most periods should, one is enough here).
    assert!(
        requests < packets,
        "{requests} requests for {packets} packets"
    );
    assert!(arrays.len() >= 2, "arrays: {arrays:?}");
    assert!(arrays.iter().all(|size| *size >= 2), "arrays: {arrays:?}");
    assert!(arrays.contains(&3), "arrays: {arrays:?}");
    // An array never carries two packets of one job.
    for request in &platform.lock().unwrap().telemetry_requests {
        let mut seen = request.jobs.clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), request.jobs.len(), "{request:?}");
    }
    // Still about one packet a second per job (generous bounds).
    for job in &jobs {
        let packets = platform.lock().unwrap().packets(job);
        let running: Vec<_> = packets
            .iter()
            .filter(|(_, packet)| packet.is_final.is_none())
            .collect();
        for pair in running.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            assert!(
                gap >= Duration::from_millis(400) && gap <= Duration::from_millis(3000),
                "{job}: {gap:?}"
            );
        }
    }
    stop.send(true).unwrap();
    agent.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_items_kill_order_or_fence_stops_only_its_job_at_once() {
    let (server, platform) = fake_platform().await;
    let tag = std::process::id();
    let (killed, fenced, forgotten, survivor) = (
        format!("job_bkill{tag}"),
        format!("job_bfence{tag}"),
        format!("job_bforget{tag}"),
        format!("job_bsurvive{tag}"),
    );
    let kill_marker = format!("sleep 311.{tag}");
    let fence_marker = format!("sleep 312.{tag}");
    let forget_marker = format!("sleep 313.{tag}");
    let survivor_marker = format!("sleep 9.{tag}");
    {
        let mut platform = platform.lock().unwrap();
        platform.telemetry_kill.push(killed.clone());
        platform.fenced.push(fenced.clone());
        platform.telemetry_forgotten.push(forgotten.clone());
        // The orders come with the third packet: an aligned period, posted together.
        for job in [&killed, &fenced, &forgotten] {
            platform.orders_from_packet.insert(job.clone(), 3);
        }
        platform.queue = vec![
            manifest(&killed, &format!("exec {kill_marker}"), 1),
            manifest(&fenced, &format!("exec {fence_marker}"), 1),
            manifest(&forgotten, &format!("exec {forget_marker}"), 1),
            manifest(&survivor, &format!("exec {survivor_marker}"), 1),
        ];
    }
    let data_dir = tempfile::tempdir().unwrap();
    let _unmount = support::Unmount(data_dir.path().to_path_buf());
    let (stop, stopping) = watch::channel(false);
    let agent = tokio::spawn(gp4u_agent::agent::run(
        process_config(&server, data_dir.path()),
        stopping,
    ));
    for (job, marker) in [
        (&killed, &kill_marker),
        (&fenced, &fence_marker),
        (&forgotten, &forget_marker),
    ] {
        let took = stopped_after_order(&platform, job, marker).await;
        assert!(
            took < Duration::from_secs(5),
            "{job}: killed {took:?} after"
        );
    }
    // The orders were items of arrays (with the survivor's packets), and the survivor was
    // not touched.
    {
        let platform = platform.lock().unwrap();
        assert!(
            !platform.ordered_in_array.is_empty(),
            "no order went out as an array item"
        );
        for job in &platform.ordered_in_array {
            let with_survivor = platform.telemetry_requests.iter().any(|request| {
                request.array && request.jobs.contains(job) && request.jobs.contains(&survivor)
            });
            assert!(with_survivor, "{job}: never posted with the survivor");
        }
    }
    assert!(process_alive(&survivor_marker), "the survivor was killed");
    let done = finals(&platform, &[survivor.as_str()], Duration::from_secs(60)).await;
    assert_eq!(done[&survivor].exit_code, Some(0), "{done:?}");
    {
        let platform = platform.lock().unwrap();
        for job in [&killed, &fenced, &forgotten] {
            let ordered = platform.kill_answered[job];
            let after: Vec<_> = platform
                .packets(job)
                .into_iter()
                .filter(|(at, _)| *at > ordered)
                .collect();
            assert!(after.is_empty(), "{job}: sent after the order: {after:?}");
            assert!(
                !platform
                    .reports
                    .iter()
                    .any(|(id, report)| id == job && report.status != "running"),
                "{job}: reported after the order"
            );
        }
        // The survivor kept posting after the others were stopped.
        let last_order = [&killed, &fenced, &forgotten]
            .iter()
            .map(|job| platform.kill_answered[*job])
            .max()
            .unwrap();
        let later = platform
            .packets(&survivor)
            .iter()
            .filter(|(at, packet)| *at > last_order && packet.is_final.is_none())
            .count();
        assert!(later >= 2, "the survivor sent {later} packets after");
    }
    stop.send(true).unwrap();
    agent.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_without_arrays_gets_one_packet_per_request() {
    let (server, platform) = fake_platform().await;
    let tag = std::process::id();
    let jobs: Vec<String> = (0..3).map(|n| format!("job_bold{n}x{tag}")).collect();
    {
        let mut platform = platform.lock().unwrap();
        platform.refuse_arrays = true;
        platform.queue = jobs
            .iter()
            .map(|job| manifest(job, "sleep 4.5; exit 0", 1))
            .collect();
    }
    let data_dir = tempfile::tempdir().unwrap();
    let _unmount = support::Unmount(data_dir.path().to_path_buf());
    let (stop, stopping) = watch::channel(false);
    let agent = tokio::spawn(gp4u_agent::agent::run(
        process_config(&server, data_dir.path()),
        stopping,
    ));
    let names: Vec<&str> = jobs.iter().map(String::as_str).collect();
    let done = finals(&platform, &names, Duration::from_secs(60)).await;
    for job in &jobs {
        assert_eq!(
            done.get(job).and_then(|report| report.exit_code),
            Some(0),
            "{done:?}"
        );
    }
    {
        let platform = platform.lock().unwrap();
        let arrays: Vec<_> = platform
            .telemetry_requests
            .iter()
            .filter(|request| request.array)
            .collect();
        // One array tried and refused; then single posts only (remembered).
        assert_eq!(arrays.len(), 1, "{arrays:?}");
        assert!(arrays[0].refused);
        let refused_at = arrays[0].at;
        // The refused array's packets went again, one by one, and every job kept posting.
        for job in &arrays[0].jobs {
            assert!(
                platform
                    .packets(job)
                    .iter()
                    .any(|(at, packet)| *at > refused_at && packet.is_final.is_none()),
                "{job}: its refused packet was not posted again"
            );
        }
        for job in &jobs {
            let running = platform
                .packets(job)
                .iter()
                .filter(|(_, packet)| packet.is_final.is_none())
                .count();
            assert!(running >= 3, "{job}: {running} packets");
        }
    }
    stop.send(true).unwrap();
    agent.await.unwrap().unwrap();
}
