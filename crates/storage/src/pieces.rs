//! Pieces: write (checked against a digest) into the content file, record, read, announce.

use crate::content::{
    start_writeback, stream_into_file, PieceHasher, PieceSums, SpanHasher, Streamed,
};
use crate::export::open_for_write;
use crate::writers::{PieceWriter, WriteProgress, WriteSource, WriteState, FORWARDABLE};
use crate::{
    ContentReader, PieceEvent, PieceMetadata, Storage, StorageError, TaskMetadata,
    WRITE_BUFFER_SIZE,
};
use damselfly_core::digest::{
    format_crc32, Digest, DigestAlgorithm, TRUSTED_PIECE_DIGEST_ALGORITHM,
};
use damselfly_core::{PieceSpan, RelayPath};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};
use tokio::sync::broadcast;
use tracing::{debug, warn};

/// Past this many pieces, a window's records are read in one scan of the task's rather than
/// looked up one by one.
const MAX_PIECE_LOOKUPS: u32 = 64;

impl Storage {
    /// Streams exactly `span.length` bytes from `reader` into the content file at
    /// `span.offset`, computing crc32 on the way. If `expected_digest` is Some and non-empty and
    /// differs: Err(StorageError::DigestMismatch) and nothing recorded. Otherwise records the
    /// piece and broadcasts PieceEvent::Finished. Short reads are an error. A piece that is
    /// already recorded is returned as is, without reading: a served piece is never rewritten.
    /// The recorded cost is `cost` (time spent before the bytes flowed) plus the streaming time.
    pub async fn write_piece<R: AsyncRead + Unpin>(
        &self,
        task_id: &str,
        span: PieceSpan,
        reader: R,
        expected_digest: Option<&str>,
        parent_id: Option<&str>,
        cost: Duration,
    ) -> Result<PieceMetadata, StorageError> {
        let check = match expected_digest {
            Some(digest) => PieceCheck::Crc32(digest),
            None => PieceCheck::Nothing,
        };
        self.write_piece_checked(task_id, span, reader, check, parent_id, cost)
            .await
    }

    /// [`Storage::write_piece`] with the piece's check spelled out: with
    /// [`PieceCheck::Trusted`], the bytes are hashed with the trusted digest's algorithm as
    /// they are written, so a piece that does not match is never recorded, announced or served
    /// (its unrecorded bytes in the content file are overwritten by the next attempt). One
    /// writer at a time holds a piece; a second one waits and then gets the recorded piece.
    pub async fn write_piece_checked<R: AsyncRead + Unpin>(
        &self,
        task_id: &str,
        span: PieceSpan,
        reader: R,
        check: PieceCheck<'_>,
        parent_id: Option<&str>,
        cost: Duration,
    ) -> Result<PieceMetadata, StorageError> {
        let source = PieceOrigin {
            parent_id,
            cost,
            forwarding: Forwarding::Shown,
        };
        match self
            .write_piece_unrecorded(task_id, span, reader, check.algorithm(), source)
            .await?
        {
            Written::Recorded(piece) => Ok(piece),
            Written::Held(held) => held.record(self, check),
        }
    }

    /// Writes origin bytes (nothing to check: the origin is the source of truth) like
    /// [`Storage::write_piece`], hashing them with `trusted` on the way, so a back-to-source
    /// peer reports the piece's trusted digest without reading the piece back. The digest is
    /// None when the piece was already recorded (nothing was written).
    pub async fn write_origin_piece<R: AsyncRead + Unpin>(
        &self,
        task_id: &str,
        span: PieceSpan,
        reader: R,
        trusted: Option<DigestAlgorithm>,
        cost: Duration,
    ) -> Result<WrittenPiece, StorageError> {
        let source = PieceOrigin {
            parent_id: None,
            cost,
            forwarding: Forwarding::Shown,
        };
        match self
            .write_piece_unrecorded(task_id, span, reader, trusted, source)
            .await?
        {
            Written::Recorded(piece) => Ok(WrittenPiece::unhashed(piece)),
            Written::Held(held) => held.record_hashed(self, PieceCheck::Nothing),
        }
    }

    /// Writes piece `span`'s bytes from `reader` as [`Storage::write_piece_checked`] does,
    /// hashing them with crc32 and `trusted` (if given) on the way, but leaves the check and
    /// the record to the caller: for a piece whose expected digest arrives after its bytes (a
    /// parent forwarding a piece that is still arriving there). The piece stays held against
    /// other writers until the returned [`HeldPiece`] is recorded or dropped.
    pub async fn write_piece_unrecorded<R: AsyncRead + Unpin>(
        &self,
        task_id: &str,
        span: PieceSpan,
        reader: R,
        trusted: Option<DigestAlgorithm>,
        source: PieceOrigin<'_>,
    ) -> Result<Written, StorageError> {
        let started = Instant::now();
        let task = self.require_task(task_id)?;
        check_span(&task, span)?;
        let mut writer = self.inner.piece_writers.hold(task_id, span.number).await;
        if let Some(existing) = self.piece(task_id, span.number)? {
            debug!(
                task_id,
                number = span.number,
                "piece already recorded, not rewriting it"
            );
            return Ok(Written::Recorded(existing));
        }
        self.publish_write(
            &mut writer,
            task_id,
            span,
            source.write_source(),
            source.relay_path(),
        );
        let streamed = self
            .stream_span(task_id, span.offset, span.length, reader, trusted, writer)
            .await?;
        if streamed.bytes < span.length {
            return Err(StorageError::ShortRead {
                task_id: task_id.to_string(),
                number: span.number,
                expected: span.length,
                received: streamed.bytes,
            });
        }
        let writer = streamed
            .writer
            .ok_or_else(|| StorageError::Io(io::Error::other("piece writer lost in a write")))?;
        let source = PieceOrigin {
            cost: source.cost + started.elapsed(),
            ..source
        };
        Ok(Written::Held(HeldPiece::new(
            task_id,
            span,
            source,
            streamed.sums,
            writer,
        )))
    }

    /// Shows a write of `span` to readers as it goes: origin bytes to everyone, a parent's
    /// (unverified) bytes only to cut-through forwarding, relayed bytes to cut-through
    /// forwarding while their path may grow; and announces the forwardable ones as arriving.
    fn publish_write(
        &self,
        writer: &mut PieceWriter,
        task_id: &str,
        span: PieceSpan,
        source: WriteSource,
        path: RelayPath,
    ) {
        writer.publish_from(span.offset, source, path);
        if FORWARDABLE.contains(&source) {
            self.inner
                .notifier
                .publish(task_id, PieceEvent::Arriving(span));
        }
    }

    /// Records `piece`, written by `writer`, and tells readers following that write.
    fn record_written(
        &self,
        task_id: &str,
        piece: PieceMetadata,
        writer: &PieceWriter,
    ) -> Result<PieceMetadata, StorageError> {
        let recorded = self.record_piece(task_id, piece)?;
        writer.recorded();
        Ok(recorded)
    }

    /// The trusted digest ([`TRUSTED_PIECE_DIGEST_ALGORITHM`]) of what the content file holds
    /// at `span`: computed by a back-to-source peer for its report.
    pub async fn trusted_digest(
        &self,
        task_id: &str,
        span: PieceSpan,
    ) -> Result<String, StorageError> {
        let path = self.content_path(task_id);
        tokio::task::spawn_blocking(move || -> io::Result<String> {
            use damselfly_core::digest::DigestHasher;
            use std::os::unix::fs::FileExt;
            let file = std::fs::File::open(&path)?;
            let mut hasher = DigestHasher::new(TRUSTED_PIECE_DIGEST_ALGORITHM);
            let mut buffer = vec![0u8; WRITE_BUFFER_SIZE];
            let mut done = 0u64;
            while done < span.length {
                let want = usize::try_from(span.length - done)
                    .map_or(buffer.len(), |left| left.min(buffer.len()));
                file.read_exact_at(&mut buffer[..want], span.offset + done)?;
                hasher.update(&buffer[..want]);
                done += want as u64;
            }
            Ok(hasher.finalize().to_string())
        })
        .await
        .map_err(|e| io::Error::other(format!("piece hash task failed: {e}")))?
        .map_err(StorageError::from)
    }

    /// Writes piece `span` with `fill`, a blocking function that gets the task's content file,
    /// writes the whole span itself, passing every byte through the given [`PieceHasher`]
    /// (crc32, and the trusted digest `from` asks for), and returns its sums, or `None` when it
    /// wrote nothing and the caller should use an async write instead. For fast paths that
    /// move bytes from a socket to the file without an async reader in between. The span is
    /// checked, and the piece checked as `from` says and recorded, as by the async writes;
    /// `cost` is the time spent before the bytes flowed.
    pub async fn write_piece_with<F, E>(
        &self,
        task_id: &str,
        span: PieceSpan,
        from: PieceFrom<'_>,
        cost: Duration,
        fill: F,
    ) -> Result<Option<WrittenPiece>, E>
    where
        F: FnOnce(&std::fs::File, &WriteProgress, PieceHasher) -> Result<Option<PieceSums>, E>
            + Send
            + 'static,
        E: From<StorageError> + Send + 'static,
    {
        let started = Instant::now();
        let task = self.require_task(task_id)?;
        check_span(&task, span)?;
        let mut writer = self.inner.piece_writers.hold(task_id, span.number).await;
        if let Some(existing) = self.piece(task_id, span.number)? {
            return Ok(Some(WrittenPiece::unhashed(existing)));
        }
        self.publish_write(
            &mut writer,
            task_id,
            span,
            from.write_source(),
            RelayPath::default(),
        );
        let progress = writer.progress_handle();
        let path = self.content_path(task_id);
        let hasher = PieceHasher::new(from.hash());
        // The piece stays held inside the write task: a cancelled caller keeps it until the
        // write ends, and it is released only once the piece is recorded.
        let (filled, writer) = tokio::task::spawn_blocking(move || {
            let filled = open_for_write(&path)
                .map_err(|e| E::from(StorageError::from(e)))
                .and_then(|file| {
                    let filled = fill(&file, &progress, hasher);
                    if matches!(filled, Ok(Some(_))) {
                        start_writeback(&file, span.offset, span.length);
                    }
                    filled
                });
            (filled, writer)
        })
        .await
        .map_err(|e| StorageError::Io(io::Error::other(format!("piece write task failed: {e}"))))?;
        let Some(sums) = filled? else {
            return Ok(None);
        };
        let source = PieceOrigin {
            parent_id: from.parent_id(),
            cost: cost + started.elapsed(),
            forwarding: Forwarding::Shown,
        };
        let held = HeldPiece::new(task_id, span, source, sums, writer);
        Ok(Some(held.record_hashed(self, from.check())?))
    }

    /// Writes piece `number` of a task whose length may be unknown (content_length 0): reads up
    /// to `piece_length` bytes, stopping at EOF, and records what came. Ok(None) when the
    /// reader was already at EOF. Used for origins that cannot serve ranges; the bytes are
    /// hashed with `trusted` on the way, as by [`Storage::write_origin_piece`].
    pub async fn write_streamed_piece<R: AsyncRead + Unpin>(
        &self,
        task_id: &str,
        number: u32,
        reader: R,
        trusted: Option<DigestAlgorithm>,
    ) -> Result<Option<WrittenPiece>, StorageError> {
        let started = Instant::now();
        let task = self.require_task(task_id)?;
        let offset = piece_offset(&task, number)?;
        let mut writer = self.inner.piece_writers.hold(task_id, number).await;
        if let Some(existing) = self.piece(task_id, number)? {
            let drained = self.drain(reader, existing.length).await?;
            return Ok((drained > 0).then(|| WrittenPiece::unhashed(existing)));
        }
        // The span is known only when the length is; a stream of unknown length is not
        // shown before its pieces land.
        if let Some(span) = task
            .layout()
            .span(number)
            .filter(|_| task.content_length > 0)
        {
            self.publish_write(
                &mut writer,
                task_id,
                span,
                WriteSource::Origin,
                RelayPath::default(),
            );
        }
        let streamed = self
            .stream_span(task_id, offset, task.piece_length, reader, trusted, writer)
            .await?;
        if streamed.bytes == 0 {
            return Ok(None);
        }
        let span = PieceSpan {
            number,
            offset,
            length: streamed.bytes,
        };
        check_span(&task, span)?;
        let piece = PieceMetadata {
            number,
            offset,
            length: streamed.bytes,
            digest: format_crc32(streamed.sums.crc32),
            parent_id: None,
            cost: started.elapsed(),
            created_at: SystemTime::now(),
        };
        let piece = match &streamed.writer {
            Some(writer) => self.record_written(task_id, piece, writer)?,
            None => self.record_piece(task_id, piece)?,
        };
        Ok(Some(WrittenPiece {
            piece,
            trusted: streamed.sums.trusted,
        }))
    }

    pub(crate) async fn stream_span<R: AsyncRead + Unpin>(
        &self,
        task_id: &str,
        offset: u64,
        max_len: u64,
        reader: R,
        trusted: Option<DigestAlgorithm>,
        writer: PieceWriter,
    ) -> Result<Streamed, StorageError> {
        let path = self.content_path(task_id);
        let file = tokio::task::spawn_blocking(move || open_for_write(&path))
            .await
            .map_err(|e| io::Error::other(e.to_string()))??;
        let sums = SpanHasher::new(trusted, Some(writer));
        stream_into_file(
            Arc::new(file),
            offset,
            max_len,
            reader,
            &self.inner.buffers,
            sums,
        )
        .await
    }

    /// Reads and discards up to `len` bytes; returns how many there were.
    pub(crate) async fn drain<R: AsyncRead + Unpin>(
        &self,
        reader: R,
        len: u64,
    ) -> Result<u64, StorageError> {
        let mut limited = reader.take(len);
        let mut buffer = self.inner.buffers.take();
        let mut total = 0u64;
        loop {
            let n = limited
                .read(&mut buffer)
                .await
                .map_err(StorageError::SourceRead)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        self.inner.buffers.give(buffer);
        Ok(total)
    }

    pub(crate) fn record_piece(
        &self,
        task_id: &str,
        piece: PieceMetadata,
    ) -> Result<PieceMetadata, StorageError> {
        let newly_recorded = self.inner.db.record_piece(task_id, &piece)?;
        if newly_recorded {
            self.inner.usage.fetch_add(piece.length, Ordering::Relaxed);
        }
        debug!(
            task_id,
            number = piece.number,
            offset = piece.offset,
            length = piece.length,
            digest = %piece.digest,
            source = piece.parent_id.as_deref().unwrap_or("origin"),
            "piece recorded"
        );
        self.inner
            .notifier
            .publish(task_id, PieceEvent::Finished(piece.clone()));
        Ok(piece)
    }

    pub(crate) fn release_usage(&self, bytes: u64) {
        // fetch_update never fails with a closure that always returns Some.
        let _ = self
            .inner
            .usage
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    pub fn piece(&self, task_id: &str, number: u32) -> Result<Option<PieceMetadata>, StorageError> {
        self.inner.db.piece(task_id, number)
    }

    /// Recorded pieces of the task, sorted by number.
    pub fn pieces(&self, task_id: &str) -> Result<Vec<PieceMetadata>, StorageError> {
        self.inner.db.pieces(task_id)
    }

    /// Recorded pieces of the task that hold bytes of `start..end`, sorted by number, for
    /// pieces of `piece_length` bytes (every piece's record when it is 0: no layout yet).
    /// A lazy reader's range of a big blob looks up its one or two pieces instead of
    /// decoding every record of the task.
    pub fn pieces_overlapping(
        &self,
        task_id: &str,
        (start, end): (u64, u64),
        piece_length: u64,
    ) -> Result<Vec<PieceMetadata>, StorageError> {
        if piece_length == 0 {
            return self.pieces(task_id);
        }
        if end <= start {
            return Ok(Vec::new());
        }
        let number = |offset: u64| u32::try_from(offset / piece_length).unwrap_or(u32::MAX);
        let (first, last) = (number(start), number(end - 1));
        if last - first >= MAX_PIECE_LOOKUPS {
            let mut pieces = self.pieces(task_id)?;
            pieces.retain(|p| (first..=last).contains(&p.number));
            return Ok(pieces);
        }
        self.inner.db.pieces_numbered(task_id, first..=last)
    }

    pub(crate) fn require_piece(
        &self,
        task_id: &str,
        number: u32,
    ) -> Result<PieceMetadata, StorageError> {
        match self.piece(task_id, number)? {
            Some(piece) => Ok(piece),
            None if self.task(task_id)?.is_none() => {
                Err(StorageError::TaskNotFound(task_id.to_string()))
            }
            None => Err(StorageError::PieceNotFound {
                task_id: task_id.to_string(),
                number,
            }),
        }
    }

    /// An open file positioned at the piece (reader limited to its length).
    pub async fn read_piece(
        &self,
        task_id: &str,
        number: u32,
    ) -> Result<(PieceMetadata, tokio::io::Take<tokio::fs::File>), StorageError> {
        let piece = self.require_piece(task_id, number)?;
        let mut file = tokio::fs::File::open(self.content_path(task_id)).await?;
        file.seek(io::SeekFrom::Start(piece.offset)).await?;
        Ok((piece.clone(), file.take(piece.length)))
    }

    /// The recorded piece and the content file, for senders that copy with `sendfile`/`pread`
    /// at `piece.offset` instead of going through an async reader.
    pub fn open_piece(
        &self,
        task_id: &str,
        number: u32,
    ) -> Result<(PieceMetadata, std::fs::File), StorageError> {
        let piece = self.require_piece(task_id, number)?;
        let file = std::fs::File::open(self.content_path(task_id))?;
        Ok((piece, file))
    }

    /// A piece still being written, for cut-through forwarding: its span, how far the write
    /// has come, and the content file to send its bytes from. `None` when no write of it runs.
    pub fn open_arriving_piece(
        &self,
        task_id: &str,
        number: u32,
    ) -> Result<Option<ArrivingPiece>, StorageError> {
        let task = self.require_task(task_id)?;
        let Some(span) = task
            .layout()
            .span(number)
            .filter(|_| task.content_length > 0)
        else {
            return Ok(None);
        };
        let Some((state, path)) =
            self.inner
                .piece_writers
                .progress_on_path(task_id, number, &FORWARDABLE)
        else {
            return Ok(None);
        };
        let file = std::fs::File::open(self.content_path(task_id))?;
        Ok(Some(ArrivingPiece {
            span,
            state,
            path,
            file,
        }))
    }

    /// The task's content readable at any offset, for callers that stream byte ranges of
    /// landed pieces (the proxy); which bytes have landed is theirs to know (piece events).
    pub fn content_reader(&self, task_id: &str) -> ContentReader {
        ContentReader::new(self.content_path(task_id))
    }

    /// Piece events for one task (subscribe BEFORE listing pieces to not miss any).
    /// The origin write in progress of the piece holding byte `offset` of `task_id`, if one is
    /// running: the piece's offset and the file offset its bytes are written up to (in order,
    /// origin bytes only; ends when the writer is done). Lets a reader send what is there
    /// before the piece lands.
    pub fn piece_progress(
        &self,
        task_id: &str,
        offset: u64,
    ) -> Option<(u64, tokio::sync::watch::Receiver<WriteState>)> {
        let task = self.task(task_id).ok()??;
        let number = u32::try_from(offset.checked_div(task.piece_length)?).ok()?;
        let progress =
            self.inner
                .piece_writers
                .progress(task_id, number, &[WriteSource::Origin])?;
        Some((u64::from(number) * task.piece_length, progress))
    }

    /// A write in progress of piece `number` of `task_id`, from the origin, a parent or a relay
    /// whose path may grow, for cut-through forwarding: how far its bytes are in the file, and at the end whether this
    /// write was recorded (the channel closes without `recorded` when it was abandoned, e.g.
    /// its bytes failed their check). The bytes are the parent's claim until then.
    pub fn arriving_piece(
        &self,
        task_id: &str,
        number: u32,
    ) -> Option<tokio::sync::watch::Receiver<WriteState>> {
        self.inner
            .piece_writers
            .progress(task_id, number, &FORWARDABLE)
    }

    /// How far the write of piece `number` in progress has come, whatever its source.
    pub fn piece_write_progress(
        &self,
        task_id: &str,
        number: u32,
    ) -> Option<tokio::sync::watch::Receiver<WriteState>> {
        self.inner.piece_writers.progress(
            task_id,
            number,
            &[
                WriteSource::Origin,
                WriteSource::Parent,
                WriteSource::Relayed,
                WriteSource::RelayEnd,
            ],
        )
    }

    /// The pieces of `task_id` being written now (their [`PieceEvent::Arriving`] went out).
    pub fn arriving_pieces(&self, task_id: &str) -> Result<Vec<PieceSpan>, StorageError> {
        let Some(task) = self.task(task_id)? else {
            return Ok(Vec::new());
        };
        if task.content_length == 0 {
            return Ok(Vec::new());
        }
        let layout = task.layout();
        let mut numbers = self.inner.piece_writers.arriving(task_id, &FORWARDABLE);
        numbers.sort_unstable();
        Ok(numbers.into_iter().filter_map(|n| layout.span(n)).collect())
    }

    /// Changes whenever a piece write starts publishing its progress (any task, any source).
    pub fn watch_piece_writes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.piece_writers.watch_started()
    }

    pub fn subscribe(&self, task_id: &str) -> broadcast::Receiver<PieceEvent> {
        self.inner.notifier.subscribe(task_id)
    }
}

pub(crate) fn piece_offset(task: &TaskMetadata, number: u32) -> Result<u64, StorageError> {
    u64::from(number)
        .checked_mul(task.piece_length)
        .ok_or_else(|| StorageError::InvalidPiece {
            task_id: task.id.clone(),
            number,
            reason: "offset overflows".to_string(),
        })
}

/// A span must be exactly the task layout's piece; while the length is unknown (0) it must
/// start at its piece offset and be at most one piece long.
pub(crate) fn check_span(task: &TaskMetadata, span: PieceSpan) -> Result<(), StorageError> {
    let invalid = |reason: String| StorageError::InvalidPiece {
        task_id: task.id.clone(),
        number: span.number,
        reason,
    };
    if task.content_length > 0 {
        let expected = task.layout().span(span.number);
        return match expected {
            Some(expected) if expected == span => Ok(()),
            Some(expected) => Err(invalid(format!("expected {expected:?}, got {span:?}"))),
            None => Err(invalid(format!(
                "beyond content length {}",
                task.content_length
            ))),
        };
    }
    if piece_offset(task, span.number)? != span.offset
        || span.length == 0
        || span.length > task.piece_length
    {
        return Err(invalid(format!(
            "{span:?} with piece length {}",
            task.piece_length
        )));
    }
    Ok(())
}

/// Who a piece's bytes come from, for its record: the parent (None = origin) and the time
/// spent before the bytes flowed; and whether the write is shown to forwarding as it lands.
#[derive(Debug, Clone)]
pub struct PieceOrigin<'a> {
    pub parent_id: Option<&'a str>,
    pub cost: Duration,
    pub forwarding: Forwarding,
}

impl PieceOrigin<'_> {
    fn write_source(&self) -> WriteSource {
        match (self.parent_id, &self.forwarding) {
            (None, _) => WriteSource::Origin,
            (Some(_), Forwarding::Shown) => WriteSource::Parent,
            (Some(_), Forwarding::Relayed(path)) if path.may_relay() => WriteSource::Relayed,
            (Some(_), Forwarding::Relayed(_)) => WriteSource::RelayEnd,
        }
    }

    /// The stores the bytes came through while arriving.
    fn relay_path(&self) -> RelayPath {
        match &self.forwarding {
            Forwarding::Shown => RelayPath::default(),
            Forwarding::Relayed(path) => path.clone(),
        }
    }
}

/// Whether a write in progress is shown (announced as arriving, readable by cut-through
/// forwarding) before it is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarding {
    /// Shown as it lands: origin bytes, or a piece a parent holds whole.
    Shown,
    /// Bytes a parent forwards while they still arrive there, through the stores on `path`
    /// (the parent's last): shown while the path may grow (`RelayPath::may_relay`), else
    /// only once recorded. See `damselfly_core::relay` for why paths are bounded.
    Relayed(RelayPath),
}

/// A piece being written, opened for forwarding (see [`Storage::open_arriving_piece`]).
pub struct ArrivingPiece {
    pub span: PieceSpan,
    /// How far the write has come, and whether it was recorded; closes when the writer ends.
    pub state: tokio::sync::watch::Receiver<WriteState>,
    /// The stores the write's bytes came through while arriving (empty from the origin or a
    /// recorded copy); a forwarding store adds itself before telling its child.
    pub path: RelayPath,
    pub file: std::fs::File,
}

/// What [`Storage::write_piece_unrecorded`] left: the piece was recorded already (by an
/// earlier writer; nothing was read), or its bytes are written and wait for their check.
pub enum Written {
    Recorded(PieceMetadata),
    Held(HeldPiece),
}

/// A piece's bytes in the content file with their sums, not recorded yet; held against other
/// writers until [`HeldPiece::record`] or drop (dropped: never recorded, never served, and
/// overwritten by the next attempt).
pub struct HeldPiece {
    task_id: String,
    /// What will be recorded; `digest` is the crc32 of the bytes written.
    piece: PieceMetadata,
    /// The trusted digest of the bytes written, when one was asked for.
    trusted: Option<Digest>,
    writer: PieceWriter,
}

impl HeldPiece {
    fn new(
        task_id: &str,
        span: PieceSpan,
        source: PieceOrigin<'_>,
        sums: PieceSums,
        writer: PieceWriter,
    ) -> Self {
        HeldPiece {
            task_id: task_id.to_string(),
            piece: PieceMetadata {
                number: span.number,
                offset: span.offset,
                length: span.length,
                digest: format_crc32(sums.crc32),
                parent_id: source.parent_id.map(str::to_string),
                cost: source.cost,
                created_at: SystemTime::now(),
            },
            trusted: sums.trusted,
            writer,
        }
    }

    /// Checks the bytes against `check` and records the piece if they match.
    pub fn record(
        self,
        storage: &Storage,
        check: PieceCheck<'_>,
    ) -> Result<PieceMetadata, StorageError> {
        self.record_hashed(storage, check).map(|w| w.piece)
    }

    /// [`HeldPiece::record`], keeping the trusted digest the write computed.
    fn record_hashed(
        self,
        storage: &Storage,
        check: PieceCheck<'_>,
    ) -> Result<WrittenPiece, StorageError> {
        let trusted = self.trusted.as_ref().map(Digest::to_string);
        let (expected, actual) = match check {
            PieceCheck::Nothing => (None, self.piece.digest.as_str()),
            PieceCheck::Crc32(expected) => (Some(expected), self.piece.digest.as_str()),
            PieceCheck::Trusted(expected) => (Some(expected), trusted.as_deref().unwrap_or("")),
        };
        check_digest(&self.task_id, self.piece.number, expected, actual)?;
        // Held until recorded: a waiting writer then finds the piece and writes nothing.
        let piece = storage.record_written(&self.task_id, self.piece, &self.writer)?;
        Ok(WrittenPiece {
            piece,
            trusted: self.trusted,
        })
    }
}

/// A recorded piece and the trusted digest of the bytes its write hashed, if one was asked
/// for. None also when the piece was recorded before and nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenPiece {
    pub piece: PieceMetadata,
    pub trusted: Option<Digest>,
}

impl WrittenPiece {
    fn unhashed(piece: PieceMetadata) -> Self {
        Self {
            piece,
            trusted: None,
        }
    }
}

/// Who sent a piece's bytes, and so how they are checked and hashed as they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceFrom<'a> {
    /// The origin, the source of truth: nothing to check; hashed with `trusted` too when
    /// given (a back-to-source peer's report).
    Origin { trusted: Option<DigestAlgorithm> },
    /// Parent `id`, whose bytes must pass `check` before they are recorded.
    Parent { id: &'a str, check: PieceCheck<'a> },
}

impl<'a> PieceFrom<'a> {
    fn check(self) -> PieceCheck<'a> {
        match self {
            PieceFrom::Origin { .. } => PieceCheck::Nothing,
            PieceFrom::Parent { check, .. } => check,
        }
    }

    fn hash(self) -> Option<DigestAlgorithm> {
        match self {
            PieceFrom::Origin { trusted } => trusted,
            PieceFrom::Parent { check, .. } => check.algorithm(),
        }
    }

    fn parent_id(self) -> Option<&'a str> {
        match self {
            PieceFrom::Origin { .. } => None,
            PieceFrom::Parent { id, .. } => Some(id),
        }
    }

    fn write_source(self) -> WriteSource {
        match self {
            PieceFrom::Origin { .. } => WriteSource::Origin,
            PieceFrom::Parent { .. } => WriteSource::Parent,
        }
    }
}

/// What a piece must match before it is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceCheck<'a> {
    /// Nothing (bytes from the origin, which is the source of truth).
    Nothing,
    /// The `crc32:` digest the parent sent with the piece: catches corruption, not a liar.
    Crc32(&'a str),
    /// A trusted digest (`blake3:`, or `sha256:` from earlier peers) from a source the child
    /// trusts (the back-to-source peer, relayed by the scheduler): a parent cannot forge bytes
    /// to fit it.
    Trusted(&'a str),
}

impl PieceCheck<'_> {
    /// The algorithm to hash a piece with while it is written: the trusted digest's own. A
    /// digest that is not a trusted one is hashed with ours, so it fails the check.
    pub fn algorithm(self) -> Option<DigestAlgorithm> {
        let PieceCheck::Trusted(expected) = self else {
            return None;
        };
        let named = expected.parse::<Digest>().ok().map(|d| d.algorithm);
        Some(
            named
                .filter(|a| a.is_trusted_for_pieces())
                .unwrap_or(TRUSTED_PIECE_DIGEST_ALGORITHM),
        )
    }
}

/// Digests are compared as strings, as Dragonfly does; an empty expected digest is accepted
/// with a warning (peers that registered a piece by hard link send none).
pub(crate) fn check_digest(
    task_id: &str,
    number: u32,
    expected: Option<&str>,
    actual: &str,
) -> Result<(), StorageError> {
    match expected {
        Some("") => {
            warn!(
                task_id,
                number, "parent sent no piece digest, accepting the piece unverified"
            );
            Ok(())
        }
        Some(expected) if expected != actual => {
            warn!(task_id, number, expected, actual, "piece digest mismatch");
            Err(StorageError::DigestMismatch {
                task_id: task_id.to_string(),
                number,
                expected: expected.to_string(),
                actual: actual.to_string(),
            })
        }
        _ => Ok(()),
    }
}
