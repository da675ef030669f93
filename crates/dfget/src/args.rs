//! dfget's command line (Dragonfly's dfget flags, `dragonflyoss/client`), and the parsers for
//! its values.
//!
//! Every value is parsed into its final type here, so a bad URL, digest, size or header is a
//! usage error (exit 2) before anything talks to a daemon.

use clap::Parser;
use damselfly_core::Digest;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// Where the official dfdaemon listens for dfget.
pub const DEFAULT_ENDPOINT: &str = "/var/run/dragonfly/dfdaemon.sock";

/// Highest scheduling priority level (LEVEL6), also dfget's default.
const MAX_PRIORITY: i64 = 6;

/// Download a URL through the local dfdaemon (P2P with an origin fallback).
#[derive(Debug, Clone, Parser)]
#[command(name = "dfget", version, about)]
pub struct Args {
    /// URL to download (http or https).
    #[arg(value_parser = parse_url)]
    pub url: Url,

    /// Output file; a relative path is taken from the current directory.
    #[arg(short = 'O', long)]
    pub output: PathBuf,

    /// Whole-file digest the daemon verifies before the output appears:
    /// sha256:<hex>, sha512:<hex> or crc32:<decimal>.
    #[arg(long, value_parser = parse_digest)]
    pub digest: Option<Digest>,

    /// Download only bytes FIRST-LAST (inclusive, as in an HTTP Range) into the output; the
    /// daemon fetches just the pieces covering them (`Download.range`).
    #[arg(long, value_parser = parse_range)]
    pub range: Option<(u64, u64)>,

    /// Request header for the origin, as 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,

    /// Tag: the same URL with another tag is another task.
    #[arg(long, env = "DFGET_TAG")]
    pub tag: Option<String>,

    /// Application name (separates tasks like --tag; used for priorities).
    #[arg(long, env = "DFGET_APPLICATION")]
    pub application: Option<String>,

    /// Query parameter left out of the task ID (repeatable). Default: the signature and
    /// credential parameters of S3, GCS, OSS, OBS, COS and `ns`.
    #[arg(long = "filtered-query-param")]
    pub filtered_query_params: Vec<String>,

    /// Explicit content the task ID is computed from, instead of the URL.
    #[arg(long)]
    pub content_for_calculating_task_id: Option<String>,

    /// Fixed piece length, in bytes or like 4MiB (at least 4 MiB; part of the task ID).
    #[arg(long, value_parser = parse_piece_length)]
    pub piece_length: Option<u64>,

    /// Scheduling priority, 0 (LEVEL0) to 6 (LEVEL6).
    #[arg(short = 'p', long, default_value_t = 6, env = "DFGET_PRIORITY",
          value_parser = clap::value_parser!(i32).range(0..=MAX_PRIORITY))]
    pub priority: i32,

    /// Fail instead of downloading from the origin when no peer has the content.
    #[arg(long)]
    pub disable_back_to_source: bool,

    /// Accept any certificate from the origin (Dragonfly's flag; for test registries only:
    /// the daemon logs a warning for each such download).
    #[arg(long)]
    pub storage_insecure_skip_verify: bool,

    /// Give up after this long (e.g. 30m, 2h).
    #[arg(long, default_value = "2h", env = "DFGET_TIMEOUT", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// Per-download rate limit, in bytes/s or like 10MiB (K/M/G = KiB/MiB/GiB).
    #[arg(long, env = "DFGET_RATE_LIMIT", value_parser = parse_rate)]
    pub rate_limit: Option<u64>,

    /// dfdaemon unix socket. Default: /var/run/dragonfly/dfdaemon.sock, or a per-user socket
    /// ($XDG_RUNTIME_DIR/damselfly/dfdaemon.sock) when that directory is not writable.
    #[arg(short = 'e', long, env = "DFGET_ENDPOINT")]
    pub endpoint: Option<PathBuf>,

    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,

    /// Replace an existing output file.
    #[arg(long)]
    pub overwrite: bool,

    /// Fail unless the output can be hard-linked to the daemon's cache.
    #[arg(long)]
    pub force_hard_link: bool,

    /// Log level on stderr: error, warn, info, debug or trace.
    #[arg(short = 'l', long, default_value = "warn", env = "DFGET_LOG_LEVEL",
          value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: String,

    /// When no dfdaemon answers, dfget starts one; it exits after this long without work.
    #[arg(long, default_value = "5m", env = "DFGET_IDLE_EXIT", value_parser = parse_timeout)]
    pub idle_exit: Duration,

    /// The dfdaemon program to start when none answers (default: next to dfget, else PATH).
    #[arg(long, env = "DFGET_DFDAEMON_PATH")]
    pub dfdaemon_path: Option<PathBuf>,

    /// Storage directory for a dfdaemon that dfget starts (default: /var/lib/dragonfly as
    /// root, else $XDG_CACHE_HOME/damselfly or ~/.cache/damselfly).
    #[arg(long, env = "DFGET_DAEMON_STORAGE_DIR")]
    pub daemon_storage_dir: Option<PathBuf>,
}

/// Accepts absolute http(s) URLs only: the daemon has no other backends.
pub fn parse_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("not a valid URL: {e}"))?;
    match url.scheme() {
        "http" | "https" if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(url),
        "http" | "https" => Err("the URL has no host".to_string()),
        other => Err(format!(
            "unsupported scheme {other:?}: only http and https are supported"
        )),
    }
}

/// `FIRST-LAST` (inclusive byte positions) as (start, length).
pub fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let usage = || format!("range {s:?} must be FIRST-LAST, byte positions with FIRST <= LAST");
    let (first, last) = s.split_once('-').ok_or_else(usage)?;
    let first: u64 = first.trim().parse().map_err(|_| usage())?;
    let last: u64 = last.trim().parse().map_err(|_| usage())?;
    if last < first {
        return Err(usage());
    }
    let length = (last - first).checked_add(1).ok_or_else(usage)?;
    Ok((first, length))
}

pub fn parse_digest(s: &str) -> Result<Digest, String> {
    s.parse::<Digest>().map_err(|e| e.to_string())
}

/// `Name: value`. Header names are RFC 9110 tokens; values may not break the header line.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not 'Name: value'"))?;
    let name = name.trim();
    let value = value.trim();
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(format!("{name:?} is not a valid header name"));
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(format!(
            "the value of header {name:?} contains a line break"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte count: plain bytes or a number with a unit. Single letters and IEC units are binary
/// (`4M` = `4MiB` = 4194304, like curl and wget), `KB`/`MB`/`GB`/`TB` are decimal.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "{s:?} is not a size (examples: 1048576, 4MiB, 10M)"
        ));
    }
    let multiplier = unit_multiplier(unit.trim())
        .ok_or_else(|| format!("unknown size unit {:?} in {s:?}", unit.trim()))?;
    scale(number, multiplier).ok_or_else(|| format!("size {s:?} is out of range"))
}

fn unit_multiplier(unit: &str) -> Option<u64> {
    const KI: u64 = 1024;
    let multiplier = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KI,
        "m" | "mib" => KI * KI,
        "g" | "gib" => KI * KI * KI,
        "t" | "tib" => KI * KI * KI * KI,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    Some(multiplier)
}

/// `number * multiplier`, exact for integers, rounded for fractions like `1.5GiB`.
fn scale(number: &str, multiplier: u64) -> Option<u64> {
    if let Ok(n) = number.parse::<u64>() {
        return n.checked_mul(multiplier);
    }
    let n = number.parse::<f64>().ok()?;
    let bytes = (n * multiplier as f64).round();
    // u64::MAX as f64 rounds up to 2^64, so `<` keeps the cast in range.
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

pub fn parse_piece_length(s: &str) -> Result<u64, String> {
    let length = parse_size(s)?;
    damselfly_core::piece::check_fixed_piece_length(length).map_err(|e| e.to_string())
}

/// Bytes per second; a trailing `/s` is accepted (`10MiB/s`). Zero would stall the download.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let trimmed = s.trim();
    let bytes = parse_size(trimmed.strip_suffix("/s").unwrap_or(trimmed))?;
    if bytes == 0 {
        return Err("the rate limit must be above 0 bytes/s".to_string());
    }
    Ok(bytes)
}

/// A humantime duration (`90s`, `5m`, `1h30m`); zero is refused as it could never succeed.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 30s, 5m or 2h: {e}"))?;
    if duration.is_zero() {
        return Err("the duration must be above zero".to_string());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec!["dfget", "http://example.com/a.bin", "-O", "out.bin"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
    }

    #[test]
    fn defaults() {
        let args = parse(&[]).expect("minimal command line parses");
        assert_eq!(args.url.as_str(), "http://example.com/a.bin");
        assert_eq!(args.output, PathBuf::from("out.bin"));
        assert_eq!(args.priority, 6);
        assert_eq!(args.timeout, Duration::from_secs(2 * 3600));
        assert_eq!(args.idle_exit, Duration::from_secs(300));
        assert_eq!(args.rate_limit, None);
        assert_eq!(args.piece_length, None);
        assert!(args.headers.is_empty());
        assert!(!args.overwrite && !args.no_progress && !args.disable_back_to_source);
    }

    #[test]
    fn output_is_required() {
        let err = Args::try_parse_from(["dfget", "http://example.com/a"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn urls() {
        assert!(parse_url("https://example.com/x?y=1").is_ok());
        assert!(parse_url("ftp://example.com/x")
            .unwrap_err()
            .contains("ftp"));
        assert!(parse_url("example.com/x").is_err());
        assert!(parse_url("http://").is_err());
        assert!(parse_url("file:///etc/passwd").is_err());
        let err = Args::try_parse_from(["dfget", "s3://bucket/key", "-O", "x"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4194304"), Ok(4 * 1024 * 1024));
        assert_eq!(parse_size("4MiB"), Ok(4 * 1024 * 1024));
        assert_eq!(parse_size("4 MiB"), Ok(4 * 1024 * 1024));
        assert_eq!(parse_size("4m"), Ok(4 * 1024 * 1024));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(1536 * 1024 * 1024));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert_eq!(parse_size("7B"), Ok(7));
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("4 parsecs").is_err());
        assert!(parse_size("-4MiB").is_err());
        assert!(parse_size("1.2.3M").is_err());
        assert!(parse_size("99999999999999999999T").is_err());
        assert!(parse_size("16777216T").is_err());
    }

    #[test]
    fn piece_length_minimum() {
        assert_eq!(parse_piece_length("4MiB"), Ok(4 * 1024 * 1024));
        assert_eq!(parse_piece_length("16MiB"), Ok(16 * 1024 * 1024));
        assert!(parse_piece_length("1MiB").unwrap_err().contains("minimum"));
        let args = parse(&["--piece-length", "8M"]).expect("8M is a valid piece length");
        assert_eq!(args.piece_length, Some(8 * 1024 * 1024));
        assert!(parse(&["--piece-length", "4000000"]).is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_rate("10MiB/s"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert!(parse_rate("0").is_err());
        let args = parse(&["--rate-limit", "1M"]).expect("1M is a valid rate");
        assert_eq!(args.rate_limit, Some(1024 * 1024));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("soon").is_err());
        let args = parse(&["--timeout", "30m", "--idle-exit", "1m"]).expect("valid durations");
        assert_eq!(args.timeout, Duration::from_secs(1800));
        assert_eq!(args.idle_exit, Duration::from_secs(60));
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("Authorization: Bearer a:b"),
            Ok(("Authorization".to_string(), "Bearer a:b".to_string()))
        );
        assert_eq!(
            parse_header("X-Empty:"),
            Ok(("X-Empty".to_string(), String::new()))
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": value").is_err());
        assert!(parse_header("Bad Name: v").is_err());
        assert!(parse_header("X: a\r\nInjected: b").is_err());
        let args = parse(&["-H", "A: 1", "--header", "B:2"]).expect("valid headers");
        assert_eq!(
            args.headers,
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "2".to_string())
            ]
        );
    }

    #[test]
    fn digests() {
        let sha = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(parse(&["--range", "10-19"]).unwrap().range, Some((10, 10)));
        assert!(parse(&["--range", "19-10"]).is_err());
        assert!(parse(&["--range", "-10"]).is_err());
        let args = parse(&["--digest", &sha]).expect("a well-formed sha256 digest");
        assert_eq!(args.digest.map(|d| d.to_string()), Some(sha));
        assert!(parse(&["--digest", "sha256:abc"]).is_err());
        assert!(parse(&["--digest", "md5:d41d8cd98f00b204e9800998ecf8427e"]).is_err());
        assert!(parse(&["--digest", &format!("sha512:{}", "0".repeat(128))]).is_ok());
        assert!(parse(&["--digest", "crc32:1234567890"]).is_ok());
        let err = parse(&["--digest", "nonsense"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn priority_range() {
        assert_eq!(parse(&["-p", "0"]).map(|a| a.priority).ok(), Some(0));
        assert_eq!(
            parse(&["--priority", "3"]).map(|a| a.priority).ok(),
            Some(3)
        );
        assert!(parse(&["-p", "7"]).is_err());
        assert!(parse(&["-p", "-1"]).is_err());
    }

    #[test]
    fn repeated_and_simple_flags() {
        let args = parse(&[
            "--filtered-query-param",
            "sig",
            "--filtered-query-param",
            "exp",
            "--tag",
            "t",
            "--application",
            "app",
            "--content-for-calculating-task-id",
            "seed",
            "-e",
            "/tmp/d.sock",
            "--overwrite",
            "--force-hard-link",
            "--no-progress",
            "--disable-back-to-source",
            "-l",
            "debug",
        ])
        .expect("all flags parse");
        assert_eq!(args.filtered_query_params, vec!["sig", "exp"]);
        assert_eq!(args.tag.as_deref(), Some("t"));
        assert_eq!(args.application.as_deref(), Some("app"));
        assert_eq!(
            args.content_for_calculating_task_id.as_deref(),
            Some("seed")
        );
        assert_eq!(args.endpoint, Some(PathBuf::from("/tmp/d.sock")));
        assert!(args.overwrite && args.force_hard_link && args.no_progress);
        assert!(args.disable_back_to_source);
        assert_eq!(args.log_level, "debug");
        assert!(parse(&["-l", "loud"]).is_err());
    }
}
