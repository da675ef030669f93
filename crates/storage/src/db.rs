//! Task and piece records in redb.
//!
//! Piece records are committed with `Durability::None` (no fsync): a 1 GiB task records 256
//! pieces, and an fsync each would cost more than the piece I/O on slow disks. A crash can only
//! lose recent piece *records*, never record a piece whose bytes were not verified, so the
//! worst case is downloading those pieces again. A durable commit happens at least every
//! `DURABLE_COMMIT_INTERVAL`, at `finish_task`, and when the storage is dropped.

use crate::error::{db, StorageError};
use crate::metadata::{PieceMetadata, TaskMetadata};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const PIECES: TableDefinition<&str, &[u8]> = TableDefinition::new("pieces");

/// Upper bound on how much non-durable metadata a crash can lose.
pub const DURABLE_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// Whether a commit must reach the disk before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Commit {
    /// fsync now (task finished, explicit flush).
    Durable,
    /// fsync only if the last durable commit is older than DURABLE_COMMIT_INTERVAL.
    Lazy,
}

pub(crate) struct MetadataDb {
    /// None after a failed reopen; the next access tries again.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    last_durable_commit: Mutex<Instant>,
}

/// `{task_id}-{number}`, the key Dragonfly uses too.
fn piece_key(task_id: &str, number: u32) -> String {
    damselfly_core::piece::piece_id(task_id, number)
}

/// Key bounds of all pieces of a task ('.' is the byte after '-').
fn piece_key_bounds(task_id: &str) -> (String, String) {
    (format!("{task_id}-"), format!("{task_id}."))
}

/// Task IDs may contain '-', so the range of task "a" also holds pieces of task "a-b";
/// only an all-digit suffix is a piece number of this task.
fn is_piece_of(key: &str, task_id: &str) -> bool {
    key.get(task_id.len() + 1..)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(value).map_err(|e| StorageError::CorruptMetadata {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::CorruptMetadata {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

impl MetadataDb {
    pub(crate) fn open(path: &Path) -> Result<Self, StorageError> {
        let database = Database::create(path).map_err(db)?;
        let this = Self {
            db: RwLock::new(Some(database)),
            path: path.to_path_buf(),
            last_durable_commit: Mutex::new(Instant::now()),
        };
        // Tables exist from the start so read transactions never see "table missing".
        this.write(Commit::Durable, |txn| {
            txn.open_table(TASKS).map_err(db)?;
            txn.open_table(PIECES).map_err(db)?;
            Ok(())
        })?;
        Ok(this)
    }

    /// Runs `body` in one write transaction and commits it with the requested durability.
    pub(crate) fn write<T>(
        &self,
        commit: Commit,
        body: impl FnOnce(&WriteTransaction) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let durable = self.take_durable_slot(commit);
        self.with_db(|database| {
            let mut txn = database.begin_write().map_err(db)?;
            let durability = if durable {
                Durability::Immediate
            } else {
                Durability::None
            };
            txn.set_durability(durability).map_err(db)?;
            let value = body(&txn)?;
            txn.commit().map_err(db)?;
            Ok(value)
        })
    }

    /// Runs `access` on the open database. After an I/O failure (a full disk under the
    /// metadata file) redb refuses every later transaction until the database is reopened,
    /// which turned one full-disk error into a daemon that could never record anything again;
    /// so such a failure reopens it, and the next call works once there is room.
    fn with_db<T>(
        &self,
        access: impl FnOnce(&Database) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let result = {
            let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
            match guard.as_ref() {
                Some(database) => access(database),
                None => Err(StorageError::Db(redb::Error::DatabaseClosed)),
            }
        };
        if let Err(error) = &result {
            if needs_reopen(error) {
                self.reopen();
            }
        }
        result
    }

    fn reopen(&self) {
        let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
        // The old handle holds the file lock, so it must be closed before opening again.
        drop(guard.take());
        match Database::create(&self.path) {
            Ok(database) => {
                tracing::info!(path = %self.path.display(), "metadata database reopened after an I/O error");
                *guard = Some(database);
            }
            Err(error) => {
                tracing::warn!(%error, path = %self.path.display(), "cannot reopen the metadata database");
            }
        }
    }

    fn take_durable_slot(&self, commit: Commit) -> bool {
        let Ok(mut last) = self.last_durable_commit.lock() else {
            return true;
        };
        if commit == Commit::Durable || last.elapsed() >= DURABLE_COMMIT_INTERVAL {
            *last = Instant::now();
            true
        } else {
            false
        }
    }

    pub(crate) fn task(&self, task_id: &str) -> Result<Option<TaskMetadata>, StorageError> {
        self.with_db(|database| {
            let txn = database.begin_read().map_err(db)?;
            let table = txn.open_table(TASKS).map_err(db)?;
            let value = table.get(task_id).map_err(db)?;
            value.map(|v| decode(task_id, v.value())).transpose()
        })
    }

    pub(crate) fn tasks(&self) -> Result<Vec<TaskMetadata>, StorageError> {
        self.with_db(|database| {
            let txn = database.begin_read().map_err(db)?;
            let table = txn.open_table(TASKS).map_err(db)?;
            let mut tasks = Vec::new();
            for entry in table.iter().map_err(db)? {
                let (key, value) = entry.map_err(db)?;
                tasks.push(decode(key.value(), value.value())?);
            }
            Ok(tasks)
        })
    }

    pub(crate) fn piece(
        &self,
        task_id: &str,
        number: u32,
    ) -> Result<Option<PieceMetadata>, StorageError> {
        let key = piece_key(task_id, number);
        self.with_db(|database| {
            let txn = database.begin_read().map_err(db)?;
            let table = txn.open_table(PIECES).map_err(db)?;
            let value = table.get(key.as_str()).map_err(db)?;
            value.map(|v| decode(&key, v.value())).transpose()
        })
    }

    /// The recorded pieces among `numbers` (in that order), in one read: a range's
    /// pieces without decoding the rest of a big task's.
    pub(crate) fn pieces_numbered(
        &self,
        task_id: &str,
        numbers: std::ops::RangeInclusive<u32>,
    ) -> Result<Vec<PieceMetadata>, StorageError> {
        self.with_db(|database| {
            let txn = database.begin_read().map_err(db)?;
            let table = txn.open_table(PIECES).map_err(db)?;
            let mut pieces = Vec::new();
            for number in numbers {
                let key = piece_key(task_id, number);
                if let Some(value) = table.get(key.as_str()).map_err(db)? {
                    pieces.push(decode(&key, value.value())?);
                }
            }
            Ok(pieces)
        })
    }

    /// The task's recorded pieces, sorted by number.
    pub(crate) fn pieces(&self, task_id: &str) -> Result<Vec<PieceMetadata>, StorageError> {
        let (start, end) = piece_key_bounds(task_id);
        let mut pieces: Vec<PieceMetadata> = self.with_db(|database| {
            let txn = database.begin_read().map_err(db)?;
            let table = txn.open_table(PIECES).map_err(db)?;
            let mut pieces = Vec::new();
            for entry in table.range(start.as_str()..end.as_str()).map_err(db)? {
                let (key, value) = entry.map_err(db)?;
                if is_piece_of(key.value(), task_id) {
                    pieces.push(decode(key.value(), value.value())?);
                }
            }
            Ok(pieces)
        })?;
        pieces.sort_by_key(|p| p.number);
        Ok(pieces)
    }

    /// Sum of recorded piece lengths over all tasks: the cache's own usage.
    pub(crate) fn recorded_bytes(&self) -> Result<u64, StorageError> {
        self.with_db(|database| {
            let txn = database.begin_read().map_err(db)?;
            let table = txn.open_table(PIECES).map_err(db)?;
            let mut total = 0u64;
            for entry in table.iter().map_err(db)? {
                let (key, value) = entry.map_err(db)?;
                let piece: PieceMetadata = decode(key.value(), value.value())?;
                total = total.saturating_add(piece.length);
            }
            Ok(total)
        })
    }

    pub(crate) fn put_task(&self, task: &TaskMetadata, commit: Commit) -> Result<(), StorageError> {
        let value = encode(&task.id, task)?;
        self.write(commit, |txn| {
            let mut table = txn.open_table(TASKS).map_err(db)?;
            table
                .insert(task.id.as_str(), value.as_slice())
                .map_err(db)?;
            Ok(())
        })
    }

    /// Reads, changes and writes back one task in a single transaction, so concurrent
    /// updates (touch, finish) do not overwrite each other.
    pub(crate) fn update_task(
        &self,
        task_id: &str,
        commit: Commit,
        change: impl FnOnce(&mut TaskMetadata) -> Result<(), StorageError>,
    ) -> Result<TaskMetadata, StorageError> {
        self.write(commit, |txn| {
            let mut table = txn.open_table(TASKS).map_err(db)?;
            let current = table.get(task_id).map_err(db)?.map(|v| v.value().to_vec());
            let Some(current) = current else {
                return Err(StorageError::TaskNotFound(task_id.to_string()));
            };
            let mut task: TaskMetadata = decode(task_id, &current)?;
            change(&mut task)?;
            let value = encode(task_id, &task)?;
            table.insert(task_id, value.as_slice()).map_err(db)?;
            Ok(task)
        })
    }

    /// Records a piece of an existing task; returns true if it was not recorded before.
    pub(crate) fn record_piece(
        &self,
        task_id: &str,
        piece: &PieceMetadata,
    ) -> Result<bool, StorageError> {
        let key = piece_key(task_id, piece.number);
        let value = encode(&key, piece)?;
        self.write(Commit::Lazy, |txn| {
            let tasks = txn.open_table(TASKS).map_err(db)?;
            if tasks.get(task_id).map_err(db)?.is_none() {
                return Err(StorageError::TaskNotFound(task_id.to_string()));
            }
            let mut pieces = txn.open_table(PIECES).map_err(db)?;
            let previous = pieces.insert(key.as_str(), value.as_slice()).map_err(db)?;
            Ok(previous.is_none())
        })
    }

    /// Removes the task's piece records; returns the bytes they covered.
    pub(crate) fn remove_pieces(&self, task_id: &str, commit: Commit) -> Result<u64, StorageError> {
        self.write(commit, |txn| remove_pieces_in(txn, task_id))
    }

    /// Removes the task and its pieces; returns the task (if it existed) and the piece bytes.
    pub(crate) fn remove_task(
        &self,
        task_id: &str,
        commit: Commit,
    ) -> Result<(Option<TaskMetadata>, u64), StorageError> {
        self.write(commit, |txn| {
            let mut tasks = txn.open_table(TASKS).map_err(db)?;
            let removed = tasks
                .remove(task_id)
                .map_err(db)?
                .map(|v| v.value().to_vec());
            let task = removed.map(|bytes| decode(task_id, &bytes)).transpose()?;
            let bytes = remove_pieces_in(txn, task_id)?;
            Ok((task, bytes))
        })
    }

    /// An empty durable commit: makes every earlier non-durable commit persistent.
    pub(crate) fn flush(&self) -> Result<(), StorageError> {
        self.write(Commit::Durable, |_| Ok(()))
    }
}

/// redb latches an I/O failure (`PreviousIo`) until the database is reopened.
fn needs_reopen(error: &StorageError) -> bool {
    matches!(
        error,
        StorageError::NoSpace(_)
            | StorageError::Db(redb::Error::PreviousIo)
            | StorageError::Db(redb::Error::Io(_))
    )
}

fn remove_pieces_in(txn: &WriteTransaction, task_id: &str) -> Result<u64, StorageError> {
    let (start, end) = piece_key_bounds(task_id);
    let mut table = txn.open_table(PIECES).map_err(db)?;
    let mut keys = Vec::new();
    let mut bytes = 0u64;
    for entry in table.range(start.as_str()..end.as_str()).map_err(db)? {
        let (key, value) = entry.map_err(db)?;
        let key = key.value().to_string();
        if !is_piece_of(&key, task_id) {
            continue;
        }
        // A corrupt record still has to go; it just does not count towards usage.
        if let Ok(piece) = decode::<PieceMetadata>(&key, value.value()) {
            bytes = bytes.saturating_add(piece.length);
        }
        keys.push(key);
    }
    for key in keys {
        table.remove(key.as_str()).map_err(db)?;
    }
    Ok(bytes)
}
