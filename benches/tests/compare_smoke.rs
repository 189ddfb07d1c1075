//! The README's main job must not rot: run the comparison runner binary with `--smoke` (tiny
//! sizes, a few seconds even in a debug build) and check its table, JSON and charts.

use std::process::Command;
use std::time::Duration;

#[test]
fn compare_smoke_prints_every_row_and_valid_json() {
    let dir = std::env::temp_dir().join(format!("compare-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let plots = dir.join("plots");
    let stdout = run_compare(&[
        "--smoke".as_ref(),
        "--no-progress".as_ref(),
        "--json".as_ref(),
        json.as_os_str(),
        "--plot".as_ref(),
        plots.as_os_str(),
    ]);

    // The headline table has one row per workload family, with ours measured.
    let headline = stdout
        .split("## Headline")
        .nth(1)
        .expect("no headline table");
    for id in [
        "apply",
        "map_trivial",
        "cpu_10us/w1",
        "cpu_100us/w1",
        "payload_1MiB",
        "crash_recovery",
        "queue_spsc/64B",
        "queue_mpmc/64B",
        "pipe_rtt_hot/64B",
        "pipe_rtt_asleep/64B",
        "lock_handoff",
    ] {
        let row = row_of(headline, &format!("| {id} |"));
        assert!(
            !row.starts_with(&format!("| {id} | - |")),
            "ours not measured: {row}"
        );
    }
    // The growing tasks run on the pools' worker count, which is the machine's.
    let row = row_of(headline, "| cpu_growing/w");
    assert_ne!(
        row.split('|').nth(2).map(str::trim),
        Some("-"),
        "ours not measured: {row}"
    );
    // The peers and the floor appear in the detailed tables.
    for name in [
        "rayon par_iter",
        "std::thread+crossbeam",
        "threadpool",
        "procspawn pool",
        "socketpair",
        "ipc-channel",
        "iceoryx2 publish-subscribe (copy, busy poll)",
        "iceoryx2 request-response (copy, busy poll)",
        "iceoryx2 publish-subscribe + event (copy, listener sleeps)",
        "floor: spin ping-pong",
        "floor: futex ping-pong",
        "floor: fork() of this process",
        "memcpy",
    ] {
        assert!(stdout.contains(&format!("| {name}")), "no row for {name}");
    }
    // The crash table shows our pool surviving an abort and rayon's process dying of it.
    assert!(
        stdout.contains("WorkerLost"),
        "no WorkerLost in the crash table"
    );
    assert!(stdout.contains("the whole process died"), "{stdout}");
    assert!(
        stdout.contains("crash -> WorkerLost"),
        "no crash recovery rows"
    );
    // The Fork replacement's target row reads against the bare fork measured in the same run.
    let fork_row = row_of(&stdout, "| replacing a dead worker (fork) |");
    assert!(
        fork_row.contains("a bare fork() of this process until its child runs"),
        "the fork row shows no floor: {fork_row}"
    );

    // The JSON parses and has samples, medians and the system description.
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["system"]["cores"].as_u64().unwrap() >= 1);
    assert!(!v["system"]["kernel"].as_str().unwrap().is_empty());
    let workloads = v["workloads"].as_array().unwrap();
    assert_eq!(workloads.len(), 12);
    for w in workloads {
        let ours = w["contenders"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["kind"] == "ours")
            .unwrap();
        assert_eq!(ours["samples"].as_array().unwrap().len(), 2, "{w}");
        assert!(ours["summary"]["median"].as_f64().unwrap() > 0.0);
        assert_eq!(ours["speed_vs_ours"].as_f64().unwrap(), 1.0);
    }
    let targets = v["targets"].as_array().unwrap();
    assert!(!targets.is_empty());
    // The pipe's targets are judged from its rows (met or not, never "not measured").
    for measure in [
        "ipc-pipe 64 B round trip, hot peers",
        "ipc-pipe 64B round trip, hot against asleep",
        "ipc-pipe 64 B round trip, peers asleep",
    ] {
        assert!(
            targets
                .iter()
                .any(|t| t["measure"] == measure && t["met"].is_boolean()),
            "no judged target row {measure:?}: {targets:?}"
        );
    }
    assert!(plots.join("workers.svg").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The first line of the table `text` that starts with `start` (fails, showing `text`, if none).
fn row_of<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no row starting {start:?} in:\n{text}"))
}

/// Runs the runner with `args` under a 120 s watchdog; returns its stdout (fails on failure).
fn run_compare(args: &[&std::ffi::OsStr]) -> String {
    run_compare_with_path(args, &std::env::var_os("PATH").unwrap_or_default())
}

/// Runs the runner with `--smoke --no-progress --no-crash-demo`, `args` and a `--json` report
/// in a temporary directory of its own (`tag` names it); returns its stdout and the report.
fn run_compare_json(tag: &str, args: &[&str]) -> (String, serde_json::Value) {
    let dir = std::env::temp_dir().join(format!("compare-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let mut all: Vec<&std::ffi::OsStr> = ["--smoke", "--no-progress", "--no-crash-demo"]
        .iter()
        .chain(args)
        .map(|a| a.as_ref())
        .collect();
    all.extend(["--json".as_ref(), json.as_os_str()]);
    let stdout = run_compare(&all);
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (stdout, report)
}

/// [`run_compare`] with `PATH` set to `path` in the runner's environment.
fn run_compare_with_path(args: &[&std::ffi::OsStr], path: &std::ffi::OsStr) -> String {
    let child = Command::new(env!("CARGO_BIN_EXE_compare"))
        .args(args)
        .env("PATH", path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Watchdog: a hung runner is killed, and the test fails instead of hanging CI.
    let pid = child.id() as i32;
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(Duration::from_secs(120)).is_err() {
            // SAFETY: kill(2) on our own child, not yet reaped (wait_with_output is still
            // waiting for it), so the pid cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return true;
        }
        false
    });
    let out = child.wait_with_output().unwrap();
    let _ = done.send(());
    assert!(
        !watchdog.join().unwrap(),
        "compare {args:?} did not finish within 120 s"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "compare {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    stdout.into_owned()
}

#[test]
fn compare_load_pass_prints_quiet_and_loaded_side_by_side() {
    let (stdout, v) = run_compare_json(
        "load",
        &["--workloads", "lock_handoff,pipe_rtt_hot", "--load", "1"],
    );
    let table = stdout
        .split("## Quiet vs beside 1 CPU hogs")
        .nth(1)
        .unwrap_or_else(|| panic!("no quiet-vs-loaded table:\n{stdout}"));
    for (id, ours) in [
        ("lock_handoff", "ipc-sync Lock"),
        ("pipe_rtt_hot/64B", "ipc-pipe"),
    ] {
        let row = row_of(table, &format!("| {id} | {ours}"));
        assert!(
            row.contains("yes (") || row.contains("NO ("),
            "no verdict for {id}: {row}"
        );
    }
    assert!(
        stdout.contains("beside 1 CPU hogs (`lock_handoff`"),
        "{stdout}"
    );
    assert_eq!(v["load"].as_u64(), Some(1));
    assert_eq!(
        v["loaded"].as_array().unwrap().len(),
        v["workloads"].as_array().unwrap().len()
    );
}

#[test]
fn compare_contenders_filter_measures_only_those_and_says_so() {
    let (stdout, v) = run_compare_json(
        "contenders",
        &[
            "--workloads",
            "lock_handoff",
            "--contenders",
            "ours,PTHREAD",
        ],
    );
    assert!(
        stdout.contains("contenders: only ours, pthread (--contenders"),
        "{stdout}"
    );
    assert_eq!(v["contenders"], serde_json::json!(["ours", "pthread"]));
    let workloads = v["workloads"].as_array().unwrap();
    assert_eq!(workloads.len(), 1, "{stdout}");
    let measured: Vec<(&str, &str)> = workloads[0]["contenders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["kind"].as_str().unwrap()))
        .collect();
    assert!(
        measured.iter().any(|(_, kind)| *kind == "ours"),
        "{measured:?}"
    );
    assert!(
        measured.iter().any(|(name, _)| name.starts_with("pthread")),
        "{measured:?}"
    );
    assert!(
        measured
            .iter()
            .all(|(name, kind)| *kind == "ours" || name.starts_with("pthread")),
        "{measured:?}"
    );
}

/// Where `nats-server` is, if installed (on PATH, or where Debian puts it).
fn nats_server_dir() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            std::path::PathBuf::from("/usr/sbin"),
            std::path::PathBuf::from("/usr/local/bin"),
        ])
        .find(|dir| dir.join("nats-server").is_file())
}

/// The cluster workload's contenders all set up and measure: ours on two node processes, the
/// raw engine with its consumers in two processes of their own (this runner re-run in
/// raw-consumer mode) and in the caller's process; and the targets table judges the cluster
/// `apply` against the floor placed as our nodes.
#[test]
fn compare_cluster_apply_measures_every_contender() {
    let Some(dir) = nats_server_dir() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "nats-server is not installed, and CI is set: the cluster workload must run \
             (.ci/run installs it with apt-get install nats-server)"
        );
        eprintln!(
            "\n**********\nSKIPPED compare_cluster_apply_measures_every_contender: nats-server \
             is not on PATH. Install it (apt-get install nats-server).\n**********\n"
        );
        return;
    };
    let path = std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let stdout = run_compare_with_path(
        &[
            "--workloads".as_ref(),
            "cluster_apply".as_ref(),
            "--reps".as_ref(),
            "2".as_ref(),
            "--sample-ms".as_ref(),
            "5".as_ref(),
            "--no-python".as_ref(),
            "--no-crash-demo".as_ref(),
            "--no-progress".as_ref(),
        ],
        &path,
    );
    for (name, kind) in [
        ("pool apply on NATS (2 nodes)", "ours"),
        ("raw JetStream, consumers in 2 processes", "floor"),
        ("raw JetStream, consumers in the caller's process", "floor"),
    ] {
        let row = row_of(&stdout, &format!("| {name} | {kind} |"));
        let median = row.split('|').nth(3).unwrap_or_default();
        assert!(
            median.trim().ends_with("us") || median.trim().ends_with("ms"),
            "{name} not measured: {row}"
        );
    }
    let target = row_of(&stdout, "| cluster apply on NATS JetStream, 2 nodes |");
    assert!(
        target.contains("consumers placed as our nodes") && !target.contains("not measured"),
        "the target is not judged against the placed floor: {target}"
    );
}
