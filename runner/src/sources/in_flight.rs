//! The batch whose load is in flight while the pipeline consumes the next one.
//!
//! The pipeline loads batch N while it consumes and prepares batch N+1, so a poll of the
//! broker can now happen while a batch is loaded but not yet committed. A Kafka
//! rebalance that revokes partitions then must not hand them to a new owner before that
//! batch is committed: the new owner would consume the same changes from the older
//! committed offset and load them while this consumer's load is still running, and with
//! hard deletes an older change arriving after a newer one could bring a deleted row
//! back. So the pipeline announces every load here ([`InFlight::begin`]), the load's task
//! reports its outcome ([`InFlight::finish`]), and the Kafka source's revoke callback
//! waits for it ([`InFlight::wait_loaded`]) and commits its offsets before the
//! partitions go. The pipeline then skips its own commit of that batch
//! ([`InFlight::end`] says so).
//!
//! A source that can commit from any thread (Kafka) also gives a [`CommitNow`]: the
//! load's task then commits the batch the moment it is loaded
//! ([`InFlight::commit_loaded`]), instead of when the pipeline next looks, which can be
//! up to `batch.max_wait_ms` later while it collects the next batch from a slow topic.

use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::Checkpoint;

/// Commits a checkpoint's offsets on behalf of the source, from the load's task.
pub type CommitNow = Box<dyn Fn(&Checkpoint) -> Result<(), String> + Send + Sync>;

/// See the module docs. Shared by the pipeline, the load task and the source.
#[derive(Default)]
pub struct InFlight {
    state: Mutex<Option<Loading>>,
    changed: Condvar,
    commit_now: OnceLock<CommitNow>,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("state", &self.state)
            .field("commit_now", &self.commit_now.get().is_some())
            .finish()
    }
}

#[derive(Debug)]
struct Loading {
    checkpoint: Checkpoint,
    /// `None` while loading; then whether every event's outcome is durable.
    loaded: Option<bool>,
    /// The source committed the checkpoint itself (in a revoke).
    committed: bool,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Loading>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets the load's task commit a loaded batch at once (see the module docs). Set
    /// once, by the source; later calls are ignored.
    pub fn set_commit_now(&self, commit: CommitNow) {
        let _ = self.commit_now.set(commit);
    }

    /// Called by the load's task after [`InFlight::finish`]: commits the loaded batch
    /// through the source's [`CommitNow`], when it has one and nobody committed the
    /// batch yet. Returns whether it committed it (then neither a revoke nor the
    /// pipeline commits it again). A failed commit is left to the pipeline, which
    /// retries it through its broker breaker.
    pub fn commit_loaded(&self) -> bool {
        let Some(commit) = self.commit_now.get() else {
            return false;
        };
        let checkpoint = {
            let mut state = self.lock();
            match state.as_mut() {
                Some(l) if l.loaded == Some(true) && !l.committed => {
                    l.committed = true;
                    l.checkpoint.clone()
                }
                _ => return false,
            }
        };
        match commit(&checkpoint) {
            Ok(()) => true,
            Err(error) => {
                if let Some(l) = self.lock().as_mut() {
                    l.committed = false;
                }
                tracing::debug!(%error, "committing the batch from its load failed; the pipeline commits it");
                false
            }
        }
    }

    /// A load of the batch that ends at `checkpoint` starts.
    pub fn begin(&self, checkpoint: Checkpoint) {
        *self.lock() = Some(Loading {
            checkpoint,
            loaded: None,
            committed: false,
        });
    }

    /// The load ended: `loaded` when the batch may be committed.
    pub fn finish(&self, loaded: bool) {
        if let Some(l) = self.lock().as_mut() {
            l.loaded = Some(loaded);
        }
        self.changed.notify_all();
    }

    /// The pipeline is done with the batch (about to commit it, or giving it up).
    /// Returns whether the source already committed it.
    pub fn end(&self) -> bool {
        let ended = self.lock().take();
        self.changed.notify_all();
        ended.is_some_and(|l| l.committed)
    }

    /// Waits up to `timeout` for the load in flight, if there is one. Returns the
    /// checkpoint to commit now when it was loaded (and marks it committed, so the
    /// pipeline does not commit it again); `None` when nothing is in flight, the load
    /// failed, or it did not end in time (then the batch's commit is left to the
    /// pipeline, and the group will refuse it: the new owner replays the batch).
    pub fn wait_loaded(&self, timeout: Duration) -> Option<Checkpoint> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            match state.as_mut() {
                None => return None,
                Some(l) if l.committed => return None,
                Some(l) if l.loaded == Some(true) => {
                    l.committed = true;
                    return Some(l.checkpoint.clone());
                }
                Some(l) if l.loaded == Some(false) => return None,
                Some(_) => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = (self.changed.wait_timeout(state, left))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn checkpoint(next: i64) -> Checkpoint {
        let mut c = Checkpoint::default();
        c.next_offsets.insert((Arc::from("t"), 0), next);
        c
    }

    #[test]
    fn nothing_in_flight_returns_at_once() {
        let f = InFlight::default();
        let t = Instant::now();
        assert_eq!(f.wait_loaded(Duration::from_secs(5)), None);
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(!f.end());
    }

    #[test]
    fn a_revoke_waits_for_the_load_and_takes_over_its_commit() {
        let f = Arc::new(InFlight::default());
        f.begin(checkpoint(7));
        let loader = {
            let f = f.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                f.finish(true);
            })
        };
        let t = Instant::now();
        assert_eq!(f.wait_loaded(Duration::from_secs(10)), Some(checkpoint(7)));
        assert!(t.elapsed() >= Duration::from_millis(150), "it waited");
        loader.join().unwrap();
        // A second revoke does not commit it again, and the pipeline skips its commit.
        assert_eq!(f.wait_loaded(Duration::from_secs(1)), None);
        assert!(f.end());
    }

    /// An InFlight whose [`CommitNow`] records the offsets it committed, or fails.
    fn committing(fail: bool) -> (InFlight, Arc<Mutex<Vec<i64>>>) {
        let f = InFlight::default();
        let done = Arc::new(Mutex::new(Vec::new()));
        let d = done.clone();
        f.set_commit_now(Box::new(move |c: &Checkpoint| {
            if fail {
                return Err("refused".into());
            }
            d.lock().unwrap().extend(c.next_offsets.values().copied());
            Ok(())
        }));
        (f, done)
    }

    #[test]
    fn a_loaded_batch_is_committed_by_its_load_once() {
        let (f, done) = committing(false);
        f.begin(checkpoint(9));
        assert!(!f.commit_loaded(), "not loaded yet");
        f.finish(true);
        assert!(f.commit_loaded());
        assert!(!f.commit_loaded(), "committed once");
        // A revoke now has nothing to commit; the pipeline skips its commit.
        assert_eq!(f.wait_loaded(Duration::from_secs(1)), None);
        assert!(f.end());
        assert_eq!(*done.lock().unwrap(), vec![9]);
    }

    #[test]
    fn a_failed_load_or_commit_leaves_the_commit_to_the_pipeline() {
        let (f, done) = committing(false);
        f.begin(checkpoint(4));
        f.finish(false);
        assert!(!f.commit_loaded());
        assert!(!f.end());
        assert!(done.lock().unwrap().is_empty());

        let (f, _) = committing(true);
        f.begin(checkpoint(5));
        f.finish(true);
        assert!(!f.commit_loaded());
        assert!(!f.end(), "the pipeline commits it");
        // Without a CommitNow nothing is committed from the load.
        let f = InFlight::default();
        f.begin(checkpoint(6));
        f.finish(true);
        assert!(!f.commit_loaded());
    }

    #[test]
    fn a_failed_or_slow_load_is_not_committed_by_the_revoke() {
        let f = InFlight::default();
        f.begin(checkpoint(3));
        let t = Instant::now();
        assert_eq!(f.wait_loaded(Duration::from_millis(100)), None);
        assert!(t.elapsed() >= Duration::from_millis(100));
        f.finish(false);
        assert_eq!(f.wait_loaded(Duration::from_secs(5)), None);
        assert!(!f.end(), "the pipeline decides");
    }
}
