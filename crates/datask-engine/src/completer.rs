//! Run ends written in batches, and the next tasks claimed on the same trip.
//!
//! Every finished run hands its completion, and its slot, to one writer,
//! which records whatever has queued up meanwhile in one
//! `complete_and_claim`: the ends, then a claim of as many due tasks as the
//! freed slots (and any other free ones) allow, in one round trip where the
//! store can. The claimed tasks go to the worker loop to start. A run still
//! waits for its own outcome to be recorded, exactly as with a direct
//! `complete`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use datask_core::store::{ClaimedTask, Finished, StoreResult};
use datask_core::{LogEntry, Store, StoreError};
use jiff::Timestamp;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// Most completions written in one transaction.
const MAX_BATCH: usize = 512;

type Request = (
    Finished,
    OwnedSemaphorePermit,
    oneshot::Sender<StoreResult<()>>,
);

/// A claimed task and the slot it runs in.
pub(crate) type Started = (ClaimedTask, OwnedSemaphorePermit);

/// What the writer needs to claim for the engine.
pub(crate) struct Claiming {
    pub worker: String,
    pub lease: Duration,
    /// The engine's slots: a running task holds one permit.
    pub slots: Arc<Semaphore>,
    /// Cleared at shutdown: ends are still written, nothing more is claimed.
    pub on: Arc<AtomicBool>,
    /// Whether the last claim (the writer's or the worker loop's) took all
    /// it asked for: a backlog. Only then does the writer claim. Otherwise
    /// its trip would take the claim lock for nothing, and under a light
    /// load hold up the worker loop's claim of a task that just came in.
    pub backlog: Arc<AtomicBool>,
    /// Claimed tasks, to the worker loop.
    pub started: mpsc::UnboundedSender<Started>,
    /// Told when slots come back unclaimed because there was no backlog, so
    /// that the worker loop waits for work (a task that came in since has
    /// woken it through the store) instead of claiming again.
    pub returned: Arc<Notify>,
    /// Told when slots come back after a failed write, whose claim did not
    /// happen: the worker loop claims.
    pub freed: Arc<Notify>,
}

#[derive(Clone)]
pub(crate) struct Completer {
    queue: mpsc::UnboundedSender<Request>,
}

impl Completer {
    /// Starts the writer; it ends once every `Completer` clone is dropped
    /// and the queue is empty.
    pub(crate) fn start(
        store: Arc<dyn Store>,
        claiming: Claiming,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_batches(store, claiming, rx));
        (Completer { queue }, writer)
    }

    /// Records one run's end and gives its slot back; answers as
    /// `Store::complete` would.
    pub(crate) async fn complete(
        &self,
        done: Finished,
        slot: OwnedSemaphorePermit,
    ) -> StoreResult<()> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((done, slot, tx))
            .map_err(|_| StoreError::Backend("the completion writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("the completion writer stopped".into()))?
    }
}

async fn write_batches(
    store: Arc<dyn Store>,
    claiming: Claiming,
    mut rx: mpsc::UnboundedReceiver<Request>,
) {
    let mut queued = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut queued, MAX_BATCH).await > 0 {
        let mut batch = Vec::with_capacity(queued.len());
        let mut replies = Vec::with_capacity(queued.len());
        let mut slots: Option<OwnedSemaphorePermit> = None;
        for (done, slot, reply) in queued.drain(..) {
            batch.push(done);
            replies.push(reply);
            match &mut slots {
                Some(s) => s.merge(slot),
                None => slots = Some(slot),
            }
        }
        let Some(mut slots) = slots else { continue };
        let claims = claiming.on.load(Ordering::SeqCst) && claiming.backlog.load(Ordering::SeqCst);
        if claims {
            // Slots free already are this trip's to fill too.
            let free = claiming.slots.available_permits() as u32;
            if free > 0
                && let Ok(more) = claiming.slots.clone().try_acquire_many_owned(free)
            {
                slots.merge(more);
            }
        }
        let held = slots.num_permits();
        let limit = if claims { held } else { 0 };
        let ids: Vec<_> = batch.iter().map(|f| f.id).collect();
        match store
            .complete_and_claim(
                batch.clone(),
                &claiming.worker,
                limit,
                claiming.lease,
                Timestamp::now(),
            )
            .await
        {
            Ok((lost, claimed)) => {
                let claimed_n = claimed.len();
                if claims {
                    // (limit == held when claiming)
                    claiming.backlog.store(claimed_n == held, Ordering::SeqCst);
                }
                // Handed over before the ends are answered: at shutdown the
                // worker loop drains until every run it started has its
                // answer, and so sees every task claimed for it.
                for c in claimed {
                    let slot = slots.split(1).expect("one slot per claimed task");
                    if let Err(mpsc::error::SendError((c, _))) = claiming.started.send((c, slot)) {
                        // The worker loop is gone (the engine was dropped
                        // mid-run): hand the task back rather than let its
                        // lease run out.
                        let log = LogEntry::new("released: the engine stopped", Timestamp::now());
                        let _ = store.release(c.task.id, c.fence, vec![log]).await;
                    }
                }
                drop(slots);
                for (id, reply) in ids.into_iter().zip(replies) {
                    let outcome = if lost.contains(&id) {
                        Err(StoreError::LeaseLost(id))
                    } else {
                        Ok(())
                    };
                    let _ = reply.send(outcome);
                }
                // Slots going back unclaimed (nothing more was due, or no
                // backlog to claim for): the worker loop may be waiting
                // with every slot taken, for a task that came in meanwhile.
                if claimed_n < held {
                    claiming.returned.notify_one();
                }
            }
            // One bad entry must not fail the others: each alone, with its own answer.
            Err(e) if batch.len() > 1 => {
                tracing::warn!(error = %e, n = batch.len(), "batched completion failed; writing one by one");
                drop(slots);
                for (done, reply) in batch.into_iter().zip(replies) {
                    let (id, fence) = (done.id, done.fence);
                    let _ = reply.send(store.complete(id, fence, done.completion).await);
                }
                claiming.freed.notify_one();
            }
            Err(e) => {
                drop(slots);
                if let Some(reply) = replies.into_iter().next() {
                    let _ = reply.send(Err(e));
                }
                claiming.freed.notify_one();
            }
        }
    }
}
