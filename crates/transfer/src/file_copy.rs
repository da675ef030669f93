//! Blocking copies of a piece body from a socket into the content file, each chunk hashed
//! (crc32, and the trusted digest when asked) right after it is read, while it is hot in the
//! cache, and written at once: the fast path for ranged GETs from plain-http origins.

use crate::limiter::{acquire_all, RateLimiter};
use damselfly_core::PieceSpan;
use damselfly_storage::{PieceHasher, WriteProgress};
use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;

/// Most bytes read from the socket, hashed and written per step: large enough that syscalls
/// cost little per byte, small enough to stay in the L2 cache between the read and the
/// hashing.
pub const SOCKET_READ_BUFFER: usize = 1024 * 1024;

thread_local! {
    /// The blocking pool reuses its threads, so each keeps one read buffer.
    static READ_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Where a body goes: the content file (at the span's offset), throttled by `limiters`
/// (awaited on `runtime`), its progress published as it lands.
pub(crate) struct FileSink<'a> {
    pub file: &'a File,
    pub limiters: &'a [RateLimiter],
    pub runtime: &'a tokio::runtime::Handle,
    pub progress: &'a WriteProgress,
}

/// Why a copy stopped before the span was complete.
#[derive(Debug)]
pub(crate) enum CopyFailure {
    /// The sender closed the connection after `received` bytes.
    Closed {
        received: u64,
    },
    Read(io::Error),
    Write(io::Error),
}

/// Copies the span's bytes (`already` read ones first, then from `stream`) into the sink's
/// file at `span.offset`, every byte through `hasher`.
pub(crate) fn copy_span(
    mut stream: &TcpStream,
    already: &[u8],
    span: PieceSpan,
    sink: &FileSink<'_>,
    hasher: &mut PieceHasher,
) -> Result<(), CopyFailure> {
    let limited = sink.limiters.iter().any(|l| !l.is_unlimited());
    let mut done = 0u64;
    let first = &already[..already
        .len()
        .min(usize::try_from(span.length).unwrap_or(usize::MAX))];
    if !first.is_empty() {
        write_chunk(sink, first, span.offset, hasher)?;
        done += first.len() as u64;
    }
    READ_BUFFER.with(|cell| {
        let mut buffer = cell.borrow_mut();
        if buffer.len() != SOCKET_READ_BUFFER {
            buffer.resize(SOCKET_READ_BUFFER, 0);
        }
        while done < span.length {
            let want = usize::try_from(span.length - done)
                .unwrap_or(usize::MAX)
                .min(buffer.len());
            let n = match stream.read(&mut buffer[..want]) {
                Ok(0) => return Err(CopyFailure::Closed { received: done }),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyFailure::Read(e)),
            };
            if limited {
                sink.runtime.block_on(acquire_all(sink.limiters, n as u64));
            }
            write_chunk(sink, &buffer[..n], span.offset + done, hasher)?;
            done += n as u64;
        }
        Ok(())
    })
}

/// Hashes `chunk` and writes it at `at` (a file offset), then tells readers it is there.
fn write_chunk(
    sink: &FileSink<'_>,
    chunk: &[u8],
    at: u64,
    hasher: &mut PieceHasher,
) -> Result<(), CopyFailure> {
    hasher.update(chunk);
    sink.file
        .write_all_at(chunk, at)
        .map_err(CopyFailure::Write)?;
    sink.progress.advance(at + chunk.len() as u64);
    Ok(())
}
