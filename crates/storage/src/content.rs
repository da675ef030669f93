//! Content files: streaming piece bytes in (with crc32 on the way) and exporting them out.

use crate::error::StorageError;
use crate::writers::{PieceWriter, WriteProgress};
use damselfly_core::digest::{Digest, DigestAlgorithm, DigestHasher};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Size of one read-then-write step. Large enough that syscalls and blocking-pool hand-offs
/// cost little per byte, small enough that many concurrent pieces stay within the RSS budget
/// (two buffers per piece in flight).
pub const WRITE_BUFFER_SIZE: usize = 512 * 1024;

/// Buffers kept for reuse; more concurrent writers than this allocate and free their own.
pub const MAX_POOLED_BUFFERS: usize = 16;

/// Reusable write buffers, so a piece never allocates piece-sized or per-chunk memory.
#[derive(Default)]
pub(crate) struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    pub(crate) fn take(&self) -> Vec<u8> {
        let reused = self.free.lock().ok().and_then(|mut free| free.pop());
        reused.unwrap_or_else(|| vec![0u8; WRITE_BUFFER_SIZE])
    }

    pub(crate) fn give(&self, buffer: Vec<u8>) {
        if buffer.len() != WRITE_BUFFER_SIZE {
            return;
        }
        if let Ok(mut free) = self.free.lock() {
            if free.len() < MAX_POOLED_BUFFERS {
                free.push(buffer);
            }
        }
    }
}

/// What streaming a piece produced.
pub(crate) struct Streamed {
    pub(crate) bytes: u64,
    pub(crate) sums: PieceSums,
    /// The piece, still held against other writers until the caller records it.
    pub(crate) writer: Option<PieceWriter>,
}

/// Bytes hashed by one sum before the next takes them: small enough to stay in the L1/L2
/// cache between the crc32 and the trusted digest, large enough for BLAKE3's SIMD (it hashes
/// 16 KiB-wide batches of chunks with AVX-512).
pub const HASH_BLOCK_SIZE: usize = 64 * 1024;

/// The sums of a piece's bytes, computed in one pass as they are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceSums {
    /// Recorded and served as `crc32:` (what official peers check).
    pub crc32: u32,
    /// The trusted digest, when one was asked for.
    pub trusted: Option<Digest>,
}

/// The crc32 that is recorded and served, and the trusted digest, if one is asked for, over
/// the same bytes in the same pass: each block goes through both while it is hot in the
/// cache, instead of each sum (or a later read-back) pulling the whole buffer in again.
pub struct PieceHasher {
    crc32: crc32fast::Hasher,
    trusted: Option<DigestHasher>,
}

impl PieceHasher {
    pub fn new(trusted: Option<DigestAlgorithm>) -> Self {
        Self {
            crc32: crc32fast::Hasher::new(),
            trusted: trusted.map(DigestHasher::new),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        let Some(trusted) = &mut self.trusted else {
            self.crc32.update(bytes);
            return;
        };
        for block in bytes.chunks(HASH_BLOCK_SIZE) {
            self.crc32.update(block);
            trusted.update(block);
        }
    }

    pub fn finish(self) -> PieceSums {
        PieceSums {
            crc32: self.crc32.finalize(),
            trusted: self.trusted.map(DigestHasher::finalize),
        }
    }
}

/// The sums a piece's bytes go through on their way to the file ([`PieceHasher`]), with the
/// piece's writer. Hashing the bytes as they are written (not read back afterwards) saves a
/// copy per byte; it is sound because one writer at a time holds a piece
/// (`Storage::piece_writers`).
pub(crate) struct SpanHasher {
    sums: PieceHasher,
    /// The piece held against other writers. It travels with the sums into each write task,
    /// so a cancelled download keeps it until its last write landed: a later writer never
    /// has its checked bytes overwritten by a cancelled one's.
    writer: Option<PieceWriter>,
}

impl SpanHasher {
    pub(crate) fn new(trusted: Option<DigestAlgorithm>, writer: Option<PieceWriter>) -> Self {
        Self {
            sums: PieceHasher::new(trusted),
            writer,
        }
    }

    fn update(&mut self, chunk: &[u8]) {
        self.sums.update(chunk);
    }

    /// Where readers follow this write (silent when it does not publish).
    fn progress(&self) -> WriteProgress {
        self.writer
            .as_ref()
            .map(PieceWriter::progress_handle)
            .unwrap_or_default()
    }

    /// The bytes up to file offset `end` are in the file, in order.
    fn written_to(&self, end: u64) {
        if let Some(writer) = &self.writer {
            writer.advance(end);
        }
    }

    fn finish(self, bytes: u64) -> Streamed {
        Streamed {
            bytes,
            sums: self.sums.finish(),
            writer: self.writer,
        }
    }
}

/// One buffer on its way to the disk, with the running sums travelling alongside so hashing
/// also happens off the async worker threads.
struct Flush {
    buffer: Vec<u8>,
    hasher: SpanHasher,
    result: io::Result<()>,
}

/// Streams up to `max_len` bytes from `reader` into `file` at `offset`, stopping early only at
/// EOF. Reading the next buffer overlaps with writing (and hashing) the previous one.
pub(crate) async fn stream_into_file<R: AsyncRead + Unpin>(
    file: Arc<File>,
    offset: u64,
    max_len: u64,
    mut reader: R,
    pool: &BufferPool,
    sums: SpanHasher,
) -> Result<Streamed, StorageError> {
    let progress = sums.progress();
    let mut hasher = Some(sums);
    let mut reading = pool.take();
    let mut in_flight: Option<tokio::task::JoinHandle<Flush>> = None;
    let mut done = 0u64;

    loop {
        let want = usize::try_from(max_len - done).map_or(reading.len(), |r| r.min(reading.len()));
        let filled = match fill(&mut reader, &mut reading[..want], &progress).await {
            Ok(n) => n,
            Err(e) => {
                finish_flush(in_flight, pool).await.ok();
                return Err(StorageError::SourceRead(e));
            }
        };
        if let Some(flush) = in_flight.take() {
            let flushed = join_flush(flush).await?;
            hasher = Some(flushed.hasher);
            let spare = flushed.buffer;
            flushed.result?;
            pool.give(spare);
        }
        if filled == 0 {
            break;
        }
        let Some(running) = hasher.take() else {
            break;
        };
        let buffer = std::mem::replace(&mut reading, pool.take());
        let last = done + filled as u64 == max_len;
        let writeback = last.then_some((offset, max_len));
        in_flight = Some(spawn_flush(
            &file,
            offset + done,
            buffer,
            filled,
            running,
            writeback,
        ));
        done += filled as u64;
        if done == max_len {
            break;
        }
    }
    if let Some(flush) = in_flight.take() {
        let flushed = join_flush(flush).await?;
        flushed.result?;
        hasher = Some(flushed.hasher);
        pool.give(flushed.buffer);
    }
    pool.give(reading);
    hasher
        .map(|h| h.finish(done))
        .ok_or_else(|| StorageError::Io(io::Error::other("piece sums lost in a write task")))
}

/// Writes (and hashes) `buffer[..filled]` at `at` off the async workers; after the last
/// write of a span, starts the span's `writeback`.
fn spawn_flush(
    file: &Arc<File>,
    at: u64,
    buffer: Vec<u8>,
    filled: usize,
    mut running: SpanHasher,
    writeback: Option<(u64, u64)>,
) -> tokio::task::JoinHandle<Flush> {
    let file = Arc::clone(file);
    tokio::task::spawn_blocking(move || {
        let chunk = &buffer[..filled];
        running.update(chunk);
        let result = file.write_all_at(chunk, at);
        if result.is_ok() {
            running.written_to(at + filled as u64);
            if let Some((offset, len)) = writeback {
                start_writeback(&file, offset, len);
            }
        }
        Flush {
            buffer,
            hasher: running,
            result,
        }
    })
}

async fn join_flush(flush: tokio::task::JoinHandle<Flush>) -> Result<Flush, StorageError> {
    flush
        .await
        .map_err(|e| StorageError::Io(io::Error::other(format!("piece write task failed: {e}"))))
}

async fn finish_flush(
    in_flight: Option<tokio::task::JoinHandle<Flush>>,
    pool: &BufferPool,
) -> Result<(), StorageError> {
    if let Some(flush) = in_flight {
        let flushed = join_flush(flush).await?;
        pool.give(flushed.buffer);
        flushed.result?;
    }
    Ok(())
}

/// Starts writing a written span back to the disk without waiting for it. A finished task
/// is fsynced before it is recorded finished (`Storage::finish_task`); with each span's
/// writeback started as it lands, that fsync waits for the last pieces only, not for the
/// whole file at once (bench/netns, 64 MiB on 8 hosts sharing one disk: 0.3-0.5 s between a
/// host's last piece and its finished task). Advisory: a failure here shows in that fsync.
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: plain syscall on a descriptor this function borrows for its duration.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Longest that bytes already read wait in a buffer for more before they go to the file, when
/// a reader follows the write (a cut-through child, a range reader). Bytes that trickle in
/// would otherwise wait for a whole buffer: at the end of a task on bench/netns (64 MiB,
/// origin at 50 Mbit/s) each piece arrives from the origin at 10-12 Mbit/s, and a 512 KiB
/// buffer held its bytes 0.35 s at every hop. Fast streams fill their buffers within it.
pub const MAX_HOLD: Duration = Duration::from_millis(20);

/// Fewest bytes passed on before the buffer is full, so a slow followed write still moves in
/// steps worth a trip to the blocking pool (64 KiB take 43 ms at 12 Mbit/s).
pub const MIN_PASS_ON: usize = 64 * 1024;

/// Reads until `buffer` is full or the reader is at EOF, or, while a reader follows the write
/// (`progress`), once [`MIN_PASS_ON`] bytes are read and the first of them waited
/// [`MAX_HOLD`]; returns the bytes read. An unfollowed write keeps whole buffers: fewer
/// writes, and nobody waits for its bytes before the piece is recorded.
async fn fill<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut [u8],
    progress: &WriteProgress,
) -> io::Result<usize> {
    let mut filled = 0;
    let mut first_at: Option<tokio::time::Instant> = None;
    let enough = MIN_PASS_ON.min(buffer.len());
    while filled < buffer.len() {
        let pass_on_at = first_at
            .filter(|_| filled >= enough && progress.followed())
            .map(|first| first + MAX_HOLD);
        let read = reader.read(&mut buffer[filled..]);
        let result = match pass_on_at {
            None => read.await,
            // A read is cancel-safe: one that times out took nothing.
            Some(at) => match tokio::time::timeout_at(at, read).await {
                Ok(result) => result,
                Err(_) => break,
            },
        };
        match result {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                first_at.get_or_insert_with(tokio::time::Instant::now);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A sibling path for building an output before it atomically replaces `output`, so an error
/// never leaves a partial file under the user's name.
pub(crate) fn temporary_sibling(output: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    output.with_file_name(format!(".{name}.damselfly-{}-{n}.tmp", std::process::id()))
}

/// Removes a file, treating "already gone" as success.
pub(crate) fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A content file read at arbitrary offsets (byte ranges of landed pieces). Each read is one
/// trip to the blocking pool: the file is opened on the first and read with `pread`, where an
/// async file takes a trip each to open, seek and read (three thread hand-offs per range on
/// a lazy reader's path).
pub struct ContentReader {
    path: PathBuf,
    file: Option<Arc<File>>,
}

impl ContentReader {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path, file: None }
    }

    /// Exactly `len` bytes from `offset`; a short file is an error, never a short read.
    pub async fn read_at(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, StorageError> {
        let path = self.path.clone();
        let opened = self.file.clone();
        let (file, bytes) = tokio::task::spawn_blocking(move || -> io::Result<_> {
            use std::io::{Read, Seek};
            let file = match opened {
                Some(file) => file,
                None => Arc::new(File::open(&path)?),
            };
            // Read into spare capacity (a zeroed buffer would be written twice). Seeking the
            // shared offset is safe: this reader's file is its own, its reads one at a time.
            let mut buf = Vec::with_capacity(len);
            let mut reader = &*file;
            reader.seek(io::SeekFrom::Start(offset))?;
            reader.take(len as u64).read_to_end(&mut buf)?;
            if buf.len() < len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} bytes at {offset}, {len} asked", buf.len()),
                ));
            }
            Ok((file, buf))
        })
        .await
        .map_err(io::Error::other)??;
        self.file = Some(file);
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn bytes_that_trickle_in_are_passed_on_after_the_hold_while_followed() {
        use crate::writers::{PieceWriters, WriteSource};
        let writers = Arc::new(PieceWriters::default());
        let mut writer = writers.hold("t", 0).await;
        writer.publish_from(0, WriteSource::Origin, damselfly_core::RelayPath::default());
        let progress = writer.progress_handle();
        assert!(!progress.followed());
        let (mut feed, mut reader) = tokio::io::duplex(2 * MIN_PASS_ON);
        let mut buffer = vec![0u8; WRITE_BUFFER_SIZE];

        // Unfollowed: bytes wait for a full buffer (or the end).
        feed.write_all(&[7u8; MIN_PASS_ON]).await.unwrap();
        let unfollowed = tokio::time::timeout(
            Duration::from_secs(5),
            fill(&mut reader, &mut buffer, &progress),
        )
        .await;
        assert!(
            unfollowed.is_err(),
            "no reader waits: the buffer fills first"
        );

        let follower = writers.progress("t", 0, &[WriteSource::Origin]).unwrap();
        assert!(progress.followed());
        let filling = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let n = fill(&mut reader, &mut buffer, &progress).await.unwrap();
            (n, started.elapsed(), reader, progress)
        });
        // Nothing read yet: an idle stream is waited on as long as it takes.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!filling.is_finished());
        // Fewer than MIN_PASS_ON bytes wait on; once there are enough, they go on at the hold.
        feed.write_all(&[7u8; 1000]).await.unwrap();
        tokio::time::sleep(MAX_HOLD * 3).await;
        assert!(!filling.is_finished(), "too few bytes to pass on");
        feed.write_all(&[7u8; MIN_PASS_ON]).await.unwrap();
        let (n, took, mut reader, progress) = filling.await.unwrap();
        assert_eq!(n, MIN_PASS_ON + 1000, "a partial buffer goes on");
        assert_eq!(took, Duration::from_secs(5) + MAX_HOLD * 3);

        // A stream that keeps up fills the whole buffer; EOF ends it early.
        let mut buffer = vec![0u8; 4096];
        feed.write_all(&[1u8; 5000]).await.unwrap();
        assert_eq!(
            fill(&mut reader, &mut buffer, &progress).await.unwrap(),
            4096
        );
        drop(feed);
        assert_eq!(
            fill(&mut reader, &mut buffer, &progress).await.unwrap(),
            904
        );
        assert_eq!(fill(&mut reader, &mut buffer, &progress).await.unwrap(), 0);
        drop(follower);
        assert!(!progress.followed());
    }
}
