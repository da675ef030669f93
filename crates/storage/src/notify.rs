//! Per-task piece event channels, created on first use and dropped when nobody listens.

use crate::metadata::PieceEvent;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Events a slow subscriber may fall behind by before it sees `Lagged` and must re-list the
/// recorded pieces; 1024 covers a 4 GiB task of 4 MiB pieces.
pub const PIECE_EVENT_CAPACITY: usize = 1024;

#[derive(Default)]
pub(crate) struct Notifier {
    channels: Mutex<HashMap<String, broadcast::Sender<PieceEvent>>>,
}

impl Notifier {
    pub(crate) fn subscribe(&self, task_id: &str) -> broadcast::Receiver<PieceEvent> {
        let Ok(mut channels) = self.channels.lock() else {
            // A poisoned map only happens after a panic elsewhere; an orphan receiver still
            // lets the caller fall back to listing pieces.
            return broadcast::channel(1).1;
        };
        // Dropping abandoned channels here keeps the map as small as the live subscriptions.
        channels.retain(|_, sender| sender.receiver_count() > 0);
        channels
            .entry(task_id.to_string())
            .or_insert_with(|| broadcast::channel(PIECE_EVENT_CAPACITY).0)
            .subscribe()
    }

    pub(crate) fn publish(&self, task_id: &str, event: PieceEvent) {
        let Ok(mut channels) = self.channels.lock() else {
            return;
        };
        let terminal = matches!(event, PieceEvent::TaskFinished | PieceEvent::TaskFailed);
        let Some(sender) = channels.get(task_id) else {
            return;
        };
        let delivered = sender.send(event).is_ok();
        if terminal || !delivered {
            channels.remove(task_id);
        }
    }
}
