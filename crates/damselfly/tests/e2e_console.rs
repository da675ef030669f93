//! End-to-end: the scheduler's console in a real browser. A swarm (scheduler, a seed, three
//! daemons, dfget on each) downloads a file while a client follows the event stream; then
//! Debian's headless `chromium` loads the page and the test checks its DOM (every host, the
//! parent → child edges, byte counts equal to the daemons' own metrics) and keeps a
//! screenshot at `target/test-artifacts/console.png`.

mod common;
mod registry;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const API_TOKEN: &str = "console-test-token";
/// Virtual milliseconds chromium gives the page to fetch its JSON before it dumps or shoots.
const BROWSER_BUDGET_MS: u32 = 5000;

fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        path.split(':')
            .map(|dir| Path::new(dir).join(name))
            .find(|p| p.is_file())
    })
}

/// Runs headless chromium on `url` with `args`; its stdout.
fn chromium(browser: &Path, profile: &Path, url: &str, args: &[String]) -> String {
    let output = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--virtual-time-budget={BROWSER_BUDGET_MS}"),
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value of `attr` on the element whose opening tag contains `marker`.
fn attr_of(dom: &str, marker: &str, attr: &str) -> Option<String> {
    let at = dom.find(marker)?;
    let start = dom[..=at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let tag = &dom[start..end];
    let key = format!("{attr}=\"");
    let from = tag.find(&key)? + key.len();
    let len = tag[from..].find('"')?;
    Some(tag[from..from + len].to_string())
}

fn bytes_shown(dom: &str, id: &str) -> Option<u64> {
    attr_of(dom, &format!("id=\"{id}\""), "data-bytes")?
        .parse()
        .ok()
}

/// Reads the event stream until a change to a task arrives (or the stream ends).
fn follow_events(api: SocketAddr) -> std::thread::JoinHandle<Option<String>> {
    let mut stream = TcpStream::connect(api).expect("connect to the API");
    stream
        .write_all(
            b"GET /api/v1/events HTTP/1.1\r\nHost: console\r\nAccept: text/event-stream\r\n\r\n",
        )
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    std::thread::spawn(move || {
        let reader = BufReader::new(stream);
        reader
            .lines()
            .map_while(Result::ok)
            .find(|line| line.starts_with("data: ") && line.contains("\"kind\":\"task\""))
    })
}

fn task_id_of(api: SocketAddr, url: &str) -> String {
    let (status, body) = http_get(api, "/api/v1/tasks").expect("tasks");
    assert_eq!(status, 200);
    let tasks: Value = serde_json::from_str(&body).unwrap();
    tasks
        .as_array()
        .and_then(|t| t.iter().find(|t| t["url"] == url))
        .and_then(|t| t["id"].as_str())
        .unwrap_or_else(|| panic!("{url} not in {body}"))
        .to_string()
}

/// Where the screenshot goes: `target/test-artifacts/` next to the built binaries.
fn artifact_dir() -> PathBuf {
    let dfctl = bin("dfctl");
    let target = dfctl
        .parent()
        .and_then(Path::parent)
        .expect("binaries live in target/<profile>/");
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn console_shows_the_swarm_with_the_daemons_byte_counts() {
    let Some(browser) = find_chromium() else {
        registry::skip("chromium not installed");
        return;
    };
    let origin = Origin::start();
    let file = origin.add_random("console/file.bin", 24 * MIB + 11);
    let mut c = Cluster::new("console");
    let config = c.path("scheduler.yaml");
    std::fs::write(
        &config,
        format!("server:\n  http:\n    token: {API_TOKEN}\n"),
    )
    .unwrap();
    let api = c
        .start_scheduler_with(&["--config".into(), config.display().to_string()])
        .http;
    let mut daemons = vec![c.start_daemon(DaemonOpts {
        seed: true,
        ..Default::default()
    })];
    for _ in 0..3 {
        daemons.push(c.start_daemon(DaemonOpts::default()));
    }

    let events = follow_events(api);
    let running: Vec<_> = daemons[1..]
        .iter()
        .enumerate()
        .map(|(n, d)| {
            let out = c.path(&format!("out{n}.bin"));
            (c.spawn_dfget(&d.socket, &file.url, &out, &[]), out)
        })
        .collect();
    for (dfget, out) in running {
        assert_download_ok(&dfget.wait(), &out, &file);
    }
    let change = events.join().unwrap();
    assert!(change.is_some(), "the event stream sent no task change");

    let task_id = task_id_of(api, &file.url);
    let traffic: Vec<Traffic> = daemons.iter().map(DaemonInfo::traffic).collect();
    let sum = |f: fn(&Traffic) -> f64| traffic.iter().map(f).sum::<f64>() as u64;
    let (origin_bytes, seed_bytes, peer_bytes) = (
        sum(|t| t.back_to_source),
        sum(|t| t.remote_seed),
        sum(|t| t.remote_normal),
    );
    assert!(
        origin_bytes >= file.len() as u64,
        "the seed fetched the file"
    );
    assert_eq!(
        origin_bytes + seed_bytes + peer_bytes,
        4 * file.len() as u64,
        "every host holds one copy"
    );

    let profile = c.path("chromium-profile");
    let page = format!("http://{api}/console?live=0#task={task_id}");
    let dom = chromium(&browser, &profile, &page, &["--dump-dom".into()]);
    assert_eq!(
        attr_of(&dom, "<body", "data-loaded").as_deref(),
        Some("1"),
        "{dom}"
    );
    for daemon in &daemons {
        let row = format!("<td class=\"id\">{}-{}</td>", c.name, daemon.name);
        assert!(dom.contains(&row), "host {} missing: {dom}", daemon.name);
    }
    // Each of the three peers was fed by at least one parent.
    let edges = dom.matches("class=\"edge\"").count();
    assert!(edges >= 3, "{edges} edges in the flow: {dom}");
    assert_eq!(
        bytes_shown(&dom, "bytes-origin"),
        Some(origin_bytes),
        "{dom}"
    );
    assert_eq!(bytes_shown(&dom, "bytes-seeds"), Some(seed_bytes), "{dom}");
    assert_eq!(bytes_shown(&dom, "bytes-peers"), Some(peer_bytes), "{dom}");
    assert_eq!(
        bytes_shown(&dom, "bytes-saved"),
        Some(seed_bytes + peer_bytes)
    );
    // The seed's reason for the origin is shown; the token is never in the page.
    assert!(dom.contains("data-reason=\"seed-peer\""), "{dom}");
    assert!(!dom.contains(API_TOKEN));
    assert_eq!(
        attr_of(&dom, "id=\"unlock\"", "hidden"),
        None,
        "changes are allowed"
    );

    let shot = artifact_dir().join("console.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &browser,
        &profile,
        &page,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1400,900".into(),
        ],
    );
    let png = std::fs::read(&shot).expect("no screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        png.len()
    );
    eprintln!("console screenshot: {}", shot.display());
    c.assert_no_panics();
}
