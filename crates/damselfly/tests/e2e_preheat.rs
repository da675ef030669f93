//! End-to-end: a file preheat over the scheduler's JSON API (driven with dfctl), a dfget that
//! then takes nothing from the origin, and dfctl's task listing, showing and removal checked
//! against the daemon. Images: see `e2e_registry.rs`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const API_TOKEN: &str = "file-preheat-token";

fn dfctl(args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(bin("dfctl"))
        .args(args)
        .output()
        .expect("run dfctl");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    eprintln!("dfctl {args:?}: {}\n{stdout}{stderr}", output.status);
    (output.status.success(), stdout, stderr)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn started(token: Option<&str>) -> (Cluster, String) {
    let mut c = Cluster::new("preheat-file");
    match token {
        Some(token) => {
            let config = c.path("scheduler.yaml");
            std::fs::write(&config, format!("server:\n  http:\n    token: {token}\n")).unwrap();
            c.start_scheduler_with(&["--config".into(), config.display().to_string()]);
        }
        None => {
            c.start_scheduler();
        }
    }
    let api = c.scheduler.as_ref().unwrap().http.to_string();
    (c, api)
}

fn wait_for_hosts(api: &str, count: usize) {
    let listed = wait_until(Duration::from_secs(30), || {
        let (ok, out, _) = dfctl(&["host", "ls", "--scheduler", api, "-o", "json"]);
        ok && json(&out).as_array().map(Vec::len) == Some(count)
    });
    assert!(listed, "the scheduler never listed {count} hosts");
}

/// Two files preheated on the seed in one job; dfget on a normal daemon then gets them with
/// zero origin bytes; the cluster listings show both hosts and the tasks.
#[test]
fn file_preheat_then_dfget_takes_nothing_from_the_origin() {
    let origin = Origin::start();
    let a = origin.add_random("preheat/a.bin", 9 * MIB + 123);
    // Both above one piece: a daemon fetches a single-piece file straight from the origin.
    let b = origin.add_random("preheat/b.bin", 6 * MIB);
    let (mut c, api) = started(Some(API_TOKEN));
    c.start_daemon(DaemonOpts {
        seed: true,
        ..Default::default()
    });
    let peer = c.start_daemon(DaemonOpts::default());
    wait_for_hosts(&api, 2);

    let (ok, out, _) = dfctl(&[
        "preheat",
        &a.url,
        &b.url,
        "--scheduler",
        &api,
        "--token",
        API_TOKEN,
        "--wait",
    ]);
    assert!(ok, "the file preheat failed");
    assert!(out.contains("Preheat Succeeded!"), "{out}");
    let preheated = origin.served();
    assert!(
        preheated >= (a.len() + b.len()) as u64,
        "the seed took only {preheated} bytes from the origin"
    );

    for file in [&a, &b] {
        let out = c.path(&format!("out-{}", file.path.replace('/', "-")));
        let result = c.dfget(&peer.socket, &file.url, &out, &[]);
        assert_download_ok(&result, &out, file);
    }
    assert_eq!(
        origin.served(),
        preheated,
        "dfget took bytes from the origin"
    );
    assert_eq!(
        peer.traffic().back_to_source,
        0.0,
        "origin bytes on the peer"
    );
    assert_cluster_listed(&api, &peer, &[&a.url, &b.url]);
    c.assert_no_panics();
}

/// `dfctl host ls` shows the seed and the peer; `dfctl task ls --scheduler` the files.
fn assert_cluster_listed(api: &str, peer: &DaemonInfo, urls: &[&str]) {
    let (ok, out, _) = dfctl(&["host", "ls", "--scheduler", api]);
    assert!(
        ok && out.contains("seed") && out.contains(&peer.ip.to_string()),
        "{out}"
    );
    let (ok, out, _) = dfctl(&["task", "ls", "--scheduler", api, "-o", "json"]);
    assert!(ok);
    let listed: Vec<String> = json(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["url"].as_str().unwrap_or_default().to_string())
        .collect();
    for url in urls {
        assert!(listed.iter().any(|l| l == url), "{url} not in {listed:?}");
    }
}

/// `dfctl task ls` shows what the daemon holds (ID, URL, size, state, pieces) and
/// `dfctl task rm` removes it from the daemon's storage.
#[test]
fn dfctl_lists_and_removes_the_daemons_tasks() {
    let origin = Origin::start();
    let file = origin.add_random("ls/file.bin", 5 * MIB + 7);
    let (mut c, api) = started(None);
    let daemon = c.start_daemon(DaemonOpts::default());
    let out = c.path("out.bin");
    let result = c.dfget(&daemon.socket, &file.url, &out, &[]);
    assert_download_ok(&result, &out, &file);
    let socket = daemon.socket.display().to_string();

    let (ok, listing, _) = dfctl(&["task", "ls", "-e", &socket, "-o", "json"]);
    assert!(ok);
    let tasks = json(&listing);
    let tasks = tasks.as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let task = &tasks[0];
    assert_eq!(task["url"], file.url.as_str());
    assert_eq!(task["content_length"], file.len() as u64);
    assert_eq!(task["state"], "Succeeded");
    let piece_length = task["piece_length"].as_u64().unwrap();
    assert_eq!(
        task["pieces"].as_u64().unwrap(),
        (file.len() as u64).div_ceil(piece_length)
    );
    let id = task["id"].as_str().unwrap().to_string();
    let (ok, table, _) = dfctl(&["task", "ls", "-e", &socket]);
    assert!(ok && table.starts_with("ID") && table.contains(&id) && table.contains(&file.url));
    assert_task_shown(&socket, &id, &file);
    let held: Vec<_> = walk(&daemon.storage)
        .into_iter()
        .filter(|p| p.contains(&id))
        .collect();
    assert!(
        !held.is_empty(),
        "the daemon's storage has no file for {id}"
    );

    // Read-only by default: no token configured, so the API refuses changes.
    let (ok, _, stderr) = dfctl(&["preheat", &file.url, "--scheduler", &api]);
    assert!(!ok && stderr.contains("403"), "{stderr}");

    let (ok, out, _) = dfctl(&["task", "rm", &id, "-e", &socket]);
    assert!(ok && out.contains("Task Removed!"), "{out}");
    let (ok, listing, _) = dfctl(&["task", "ls", "-e", &socket, "-o", "json"]);
    assert!(ok);
    assert_eq!(json(&listing), Value::Array(Vec::new()));
    let held: Vec<_> = walk(&daemon.storage)
        .into_iter()
        .filter(|p| p.contains(&id))
        .collect();
    assert!(
        held.is_empty(),
        "the task's files are still there: {held:?}"
    );
    let (ok, _, stderr) = dfctl(&["task", "rm", &id, "-e", &socket]);
    assert!(!ok && stderr.contains("not"), "removing twice: {stderr}");
    c.assert_no_panics();
}

/// `dfctl task show` names the task's URL, size and state, and counts its pieces: all there,
/// all from the origin (the only daemon went there itself).
fn assert_task_shown(socket: &str, id: &str, file: &OriginFile) {
    let (ok, out, _) = dfctl(&["task", "show", id, "-e", socket, "-o", "json"]);
    assert!(ok);
    let shown = json(&out);
    assert_eq!(shown["id"], id);
    assert_eq!(shown["url"], file.url.as_str());
    assert_eq!(shown["content_length"], file.len() as u64);
    assert_eq!(shown["state"], "Succeeded");
    let total = shown["pieces_total"].as_u64().unwrap();
    assert!(total >= 2, "{shown}");
    assert_eq!(shown["pieces_done"], total);
    assert_eq!(shown["pieces_from_origin"], total);
    assert_eq!(shown["pieces_from_peers"], 0);
    assert_eq!(shown["pieces_missing"], "");
    assert!(shown["last_access"].is_string(), "{shown}");
    let (ok, table, _) = dfctl(&["task", "show", id, "-e", socket]);
    assert!(ok, "{table}");
    assert!(
        table.contains(&format!("PIECES        {total}/{total}")),
        "{table}"
    );
    assert!(table.contains(&file.url), "{table}");
    let (ok, _, stderr) = dfctl(&["task", "show", "no-such-task", "-e", socket]);
    assert!(!ok && stderr.contains("not"), "{stderr}");
}

/// Every file path under `dir`.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path.display().to_string());
            }
        }
    }
    out
}
