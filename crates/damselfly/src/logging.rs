//! Logging for the long-running programs, with Dragonfly's flags: `-l/--log-level`,
//! `--log-dir` with size-based rotation (`--log-max-files`, `--log-max-file-size`) and
//! `--console`.
//!
//! Without `--log-dir` the programs log to stderr, which is what containers and systemd
//! (journald) collect; Dragonfly writes files by default, we write them when asked. With
//! `--log-dir`, `--console` also keeps the stderr copy.

use anyhow::Context as _;
use bytesize::ByteSize;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::EnvFilter;

/// Log files kept per program, the current one included (Dragonfly's `--log-max-files`).
pub const DEFAULT_LOG_MAX_FILES: usize = 6;
/// Size at which the current log file is rotated (Dragonfly's `--log-max-file-size`).
pub const DEFAULT_LOG_MAX_FILE_SIZE: &str = "1GiB";

#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log level or tracing filter (error, warn, info, debug, trace); RUST_LOG wins when set.
    #[arg(short = 'l', long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,

    /// Write logs to `<program>.log` in this directory, rotated by size [default: stderr].
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,

    /// Log files kept, the current one included.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LOG_MAX_FILES,
          value_parser = clap::value_parser!(usize))]
    pub log_max_files: usize,

    /// Size at which a log file is rotated (e.g. 1GiB, 100MB).
    #[arg(long, value_name = "SIZE", default_value = DEFAULT_LOG_MAX_FILE_SIZE)]
    pub log_max_file_size: ByteSize,

    /// Also log to stderr when logging to files (without --log-dir, stderr is the only log).
    #[arg(long)]
    pub console: bool,
}

impl LogArgs {
    /// Installs the global subscriber for `program`.
    pub fn init(&self, program: &str) -> anyhow::Result<()> {
        let filter = EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(&self.log_level))
            .context("invalid --log-level")?;
        let builder = tracing_subscriber::fmt().with_env_filter(filter);
        let Some(dir) = &self.log_dir else {
            builder
                .with_writer(io::stderr)
                // Colour codes only for a terminal.
                .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
                .init();
            return Ok(());
        };
        if self.log_max_files == 0 || self.log_max_file_size.as_u64() == 0 {
            anyhow::bail!("--log-max-files and --log-max-file-size must be positive");
        }
        let file = RotatingFile::open(
            dir,
            program,
            self.log_max_file_size.as_u64(),
            self.log_max_files,
        )?;
        let files = Mutex::new(file);
        let console = self.console;
        let writer = files.and(io::stderr.with_filter(move |_| console));
        builder.with_writer(writer).with_ansi(false).init();
        Ok(())
    }
}

/// `<dir>/<program>.log`, moved to `.log.1` (and older ones up to `.log.<max_files - 1>`)
/// when the next write would take it past `max_size`.
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    written: u64,
    max_size: u64,
    max_files: usize,
}

impl RotatingFile {
    pub fn open(
        dir: &Path,
        program: &str,
        max_size: u64,
        max_files: usize,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the log directory {}", dir.display()))?;
        let path = dir.join(format!("{program}.log"));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            path,
            file,
            written,
            max_size,
            max_files,
        })
    }

    fn numbered(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Shifts `.log.N` up by one (dropping the oldest) and starts an empty `.log`.
    fn rotate(&mut self) -> io::Result<()> {
        if self.max_files > 1 {
            let _ = std::fs::remove_file(self.numbered(self.max_files - 1));
            for n in (1..self.max_files - 1).rev() {
                let from = self.numbered(n);
                if from.exists() {
                    std::fs::rename(&from, self.numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.numbered(1))?;
        }
        self.file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written > 0 && self.written + buf.len() as u64 > self.max_size {
            // A failed rotation must not lose the line: keep writing to the current file.
            let _ = self.rotate();
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: PathBuf) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn files_rotate_by_size_and_keep_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RotatingFile::open(dir.path(), "dfdaemon", 10, 3).unwrap();
        for line in ["aaaaaaaa\n", "bbbbbbbb\n", "cccccccc\n", "dddddddd\n"] {
            log.write_all(line.as_bytes()).unwrap();
        }
        let base = dir.path().join("dfdaemon.log");
        assert_eq!(read(base.clone()), "dddddddd\n");
        assert_eq!(read(dir.path().join("dfdaemon.log.1")), "cccccccc\n");
        assert_eq!(read(dir.path().join("dfdaemon.log.2")), "bbbbbbbb\n");
        assert!(
            !dir.path().join("dfdaemon.log.3").exists(),
            "only 3 files kept"
        );
    }

    #[test]
    fn a_reopened_file_counts_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.log"), "0123456789").unwrap();
        let mut log = RotatingFile::open(dir.path(), "s", 12, 2).unwrap();
        log.write_all(b"abc").unwrap();
        assert_eq!(read(dir.path().join("s.log")), "abc");
        assert_eq!(read(dir.path().join("s.log.1")), "0123456789");
    }

    #[test]
    fn one_file_is_truncated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RotatingFile::open(dir.path(), "x", 4, 1).unwrap();
        log.write_all(b"1234").unwrap();
        log.write_all(b"56").unwrap();
        assert_eq!(read(dir.path().join("x.log")), "56");
        assert!(!dir.path().join("x.log.1").exists());
    }
}
