//! Making room: TTL and quota eviction (GC), and room for a task before its download starts.
//!
//! The quota is `quota_bytes` when set; otherwise, as in Dragonfly, a share of the whole file
//! system (`gc.policy.diskHighThresholdPercent`/`diskLowThresholdPercent` of its size).

use crate::config::ABANDONED_TASK_AGE;
use crate::metadata::TaskMetadata;
use crate::space::{self, DiskSpace, RESERVED_FREE_BYTES};
use crate::{Storage, StorageError};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};
use tracing::info;

impl Storage {
    /// Sum of recorded piece lengths: the cache's own usage.
    pub fn usage_bytes(&self) -> u64 {
        self.inner.usage.load(Ordering::Relaxed)
    }

    /// Size and free space of the file system holding the cache.
    pub fn disk_space(&self) -> Result<DiskSpace, StorageError> {
        Ok(self.inner.space.space(&self.inner.config.dir)?)
    }

    /// TTL eviction, then quota eviction of finished tasks (LRU); returns evicted task IDs.
    /// Tasks in `in_use` are never evicted.
    pub async fn gc(&self, in_use: &HashSet<String>) -> Result<Vec<String>, StorageError> {
        self.gc_at(in_use, SystemTime::now()).await
    }

    /// [`Storage::gc`] as if the time were `now` (ages and TTLs are measured up to it).
    pub async fn gc_at(
        &self,
        in_use: &HashSet<String>,
        now: SystemTime,
    ) -> Result<Vec<String>, StorageError> {
        let mut tasks = self.list_tasks()?;
        tasks.retain(|t| !in_use.contains(&t.id));
        let mut evicted = Vec::new();

        let ttl = self.inner.config.task_ttl;
        let (expired, kept): (Vec<_>, Vec<_>) =
            tasks.into_iter().partition(|t| idle_for(t, now) >= ttl);
        for task in expired {
            self.evict(&task.id, "ttl", &mut evicted).await?;
        }
        let pressure = space::pressure(&self.inner.config, self.disk_space()?, self.usage_bytes());
        if pressure > 0 {
            self.evict_lru(kept, pressure, now, "quota", &mut evicted)
                .await?;
        }
        if !evicted.is_empty() {
            self.inner.db.flush()?;
        }
        Ok(evicted)
    }

    /// Makes room for the bytes `task_id` still needs (its length minus recorded pieces; one
    /// piece while the length is unknown) on the disk and within the quota, evicting least
    /// recently used finished tasks outside `in_use` if needed. Returns the evicted task IDs,
    /// or [`StorageError::NotEnoughSpace`] when even that is not enough.
    pub async fn ensure_space(
        &self,
        task_id: &str,
        in_use: &HashSet<String>,
    ) -> Result<Vec<String>, StorageError> {
        self.ensure_space_at(task_id, in_use, SystemTime::now())
            .await
    }

    /// [`Storage::ensure_space`] as if the time were `now`.
    pub async fn ensure_space_at(
        &self,
        task_id: &str,
        in_use: &HashSet<String>,
        now: SystemTime,
    ) -> Result<Vec<String>, StorageError> {
        let task = self.require_task(task_id)?;
        let need = self.remaining_bytes(&task)?;
        let config = &self.inner.config;
        let short = space::shortfall(config, self.disk_space()?, self.usage_bytes(), need);
        if short == 0 {
            return Ok(Vec::new());
        }
        let mut candidates = self.list_tasks()?;
        candidates.retain(|t| t.id != task_id && !in_use.contains(&t.id));
        let mut evicted = Vec::new();
        let freed = self
            .evict_lru(candidates, short, now, "space", &mut evicted)
            .await?;
        if !evicted.is_empty() {
            self.inner.db.flush()?;
        }
        // Our records undercount what a deletion frees (unrecorded partial pieces), so the
        // disk is asked again before giving up.
        let space = self.disk_space()?;
        let usage = self.usage_bytes();
        if freed < short && space::shortfall(config, space, usage, need) > 0 {
            return Err(StorageError::NotEnoughSpace {
                task_id: task_id.to_string(),
                need,
                free: self.free_for_cache(space, usage),
            });
        }
        Ok(evicted)
    }

    /// What the cache may still write: free disk space (less the reserve), capped by the quota.
    fn free_for_cache(&self, space: DiskSpace, usage: u64) -> u64 {
        let on_disk = space.available.saturating_sub(RESERVED_FREE_BYTES);
        match self.inner.config.quota_bytes {
            0 => on_disk,
            quota => on_disk.min(quota.saturating_sub(usage)),
        }
    }

    fn remaining_bytes(&self, task: &TaskMetadata) -> Result<u64, StorageError> {
        if task.content_length == 0 {
            return Ok(task.piece_length);
        }
        let recorded: u64 = self.pieces(&task.id)?.iter().map(|p| p.length).sum();
        Ok(task.content_length.saturating_sub(recorded))
    }

    /// Evicts evictable `tasks`, least recently used first, until `target` bytes are freed;
    /// returns the bytes freed.
    async fn evict_lru(
        &self,
        mut tasks: Vec<TaskMetadata>,
        target: u64,
        now: SystemTime,
        reason: &str,
        evicted: &mut Vec<String>,
    ) -> Result<u64, StorageError> {
        tasks.retain(|t| is_evictable_by_quota(t, now));
        tasks.sort_by_key(|t| t.accessed_at);
        let mut freed = 0u64;
        for task in tasks {
            if freed >= target {
                break;
            }
            freed = freed.saturating_add(self.evict(&task.id, reason, evicted).await?);
        }
        Ok(freed)
    }

    /// Deletes one task; returns the recorded bytes released.
    async fn evict(
        &self,
        task_id: &str,
        reason: &str,
        evicted: &mut Vec<String>,
    ) -> Result<u64, StorageError> {
        let bytes = match self.remove_task(task_id).await {
            Ok(bytes) => bytes,
            Err(StorageError::TaskNotFound(_)) => 0,
            Err(e) => return Err(e),
        };
        info!(task_id, reason, bytes, "task evicted");
        evicted.push(task_id.to_string());
        Ok(bytes)
    }
}

fn idle_for(task: &TaskMetadata, now: SystemTime) -> Duration {
    now.duration_since(task.accessed_at).unwrap_or_default()
}

/// Finished and failed tasks, and unfinished ones nobody touched for a day, may go to make
/// room; a download in progress must not lose its pieces.
fn is_evictable_by_quota(task: &TaskMetadata, now: SystemTime) -> bool {
    task.is_finished() || task.is_failed() || idle_for(task, now) >= ABANDONED_TASK_AGE
}
