//! Run ends written in batches.
//!
//! Every finished run hands its completion to one writer, which records
//! whatever has queued up meanwhile in one `complete_many` (one transaction),
//! so that short tasks finishing together cost one write instead of one each.
//! A run still waits for its own outcome to be recorded before its slot is
//! free, exactly as with a direct `complete`.

use std::sync::Arc;

use datask_core::store::Finished;
use datask_core::store::StoreResult;
use datask_core::{Store, StoreError};
use tokio::sync::{mpsc, oneshot};

/// Most completions written in one transaction.
const MAX_BATCH: usize = 512;

type Request = (Finished, oneshot::Sender<StoreResult<()>>);

#[derive(Clone)]
pub(crate) struct Completer {
    queue: mpsc::UnboundedSender<Request>,
}

impl Completer {
    /// Starts the writer; it ends once every `Completer` clone is dropped
    /// and the queue is empty.
    pub(crate) fn start(store: Arc<dyn Store>) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_batches(store, rx));
        (Completer { queue }, writer)
    }

    /// Records one run's end; answers as `Store::complete` would.
    pub(crate) async fn complete(&self, done: Finished) -> StoreResult<()> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((done, tx))
            .map_err(|_| StoreError::Backend("the completion writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("the completion writer stopped".into()))?
    }
}

async fn write_batches(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut queued = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut queued, MAX_BATCH).await > 0 {
        let (batch, replies): (Vec<Finished>, Vec<_>) = queued.drain(..).unzip();
        let ids: Vec<_> = batch.iter().map(|f| f.id).collect();
        match store.complete_many(batch.clone()).await {
            Ok(lost) => {
                for (id, reply) in ids.into_iter().zip(replies) {
                    let outcome = if lost.contains(&id) {
                        Err(StoreError::LeaseLost(id))
                    } else {
                        Ok(())
                    };
                    let _ = reply.send(outcome);
                }
            }
            // One bad entry must not fail the others: each alone, with its own answer.
            Err(e) if batch.len() > 1 => {
                tracing::warn!(error = %e, n = batch.len(), "batched completion failed; writing one by one");
                for (done, reply) in batch.into_iter().zip(replies) {
                    let (id, fence) = (done.id, done.fence);
                    let _ = reply.send(store.complete(id, fence, done.completion).await);
                }
            }
            Err(e) => {
                if let Some(reply) = replies.into_iter().next() {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }
}
