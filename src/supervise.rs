//! Every spawned task has an owner, and its end a meaning (SPEC §12: a task that dies is never
//! hidden). Two kinds:
//! - **critical** ([`Supervisor::critical`]): the listeners, readiness, the clock's upkeep,
//!   the change feed. The service cannot answer truthfully without them, so one that ends before
//!   shutdown — returning or panicking — is reported to `main`, which stops the process with a
//!   non-zero status and the reason in the log (the orchestrator restarts it);
//! - **restartable** ([`Supervisor::restartable`]): the purge and the secret files' reloader.
//!   Without them the service still answers correctly for a while, so one that ends is started
//!   again after a growing pause (1 s doubling to 1 min), counted in
//!   `token_sidecar_task_restarts_total{task}` and logged.
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// First pause before a restartable task is started again.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest pause.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Owns the spawned tasks; reports the end of a critical one.
#[derive(Clone)]
pub struct Supervisor {
    failures: mpsc::UnboundedSender<String>,
    stopping: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
}

/// Aborts the task it holds when dropped (an aborted supervisor takes its task along).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Supervisor {
    /// A supervisor whose critical tasks' ends go to the returned receiver, unless `stopping`
    /// says the process is shutting down.
    pub fn new(
        stopping: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
    ) -> (Self, mpsc::UnboundedReceiver<String>) {
        let (failures, receiver) = mpsc::unbounded_channel();
        (
            Self {
                failures,
                stopping,
                metrics,
            },
            receiver,
        )
    }

    fn stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Runs a task the service cannot live without: if it ends before shutdown, the process
    /// is told why.
    pub fn critical<F>(&self, name: &'static str, task: F) -> JoinHandle<()>
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let this = self.clone();
        tokio::spawn(async move {
            let mut inner = AbortOnDrop(tokio::spawn(task));
            let ended = match (&mut inner.0).await {
                Ok(Ok(())) => format!("{name} stopped"),
                Ok(Err(e)) => format!("{name} failed: {e}"),
                Err(e) if e.is_panic() => format!("{name} panicked"),
                Err(_) => return,
            };
            drop(inner);
            if !this.stopping() {
                tracing::error!(task = name, reason = %ended, "a task the service needs ended");
                let _ = this.failures.send(ended);
            }
        })
    }

    /// Runs a task that can be started again: if it ends before shutdown, it is restarted
    /// after a growing pause, counted and logged.
    pub fn restartable<F, Fut>(&self, name: &'static str, start: F) -> JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let this = self.clone();
        tokio::spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                let mut run = AbortOnDrop(tokio::spawn(start()));
                let outcome = (&mut run.0).await;
                drop(run);
                if this.stopping() {
                    return;
                }
                let how = match outcome {
                    Err(e) if e.is_panic() => "panicked",
                    _ => "stopped",
                };
                this.metrics.tasks.restarted(name);
                tracing::warn!(task = name, how, backoff = ?backoff, "task ended: restarting it");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_critical_task_that_ends_or_panics_is_reported_but_not_while_stopping() {
        let (stop, stopping) = watch::channel(false);
        let (supervisor, mut failures) = Supervisor::new(stopping, Arc::new(Metrics::new()));
        supervisor.critical("the API listener", async {
            Err("accept failed".to_owned())
        });
        let reason = failures.recv().await;
        assert_eq!(
            reason.as_deref(),
            Some("the API listener failed: accept failed")
        );
        supervisor.critical("health upkeep", async { panic!("a bug") });
        assert_eq!(
            failures.recv().await.as_deref(),
            Some("health upkeep panicked")
        );
        let _ = stop.send(true);
        let done = supervisor.critical("the change feed", async { Ok(()) });
        assert!(done.await.is_ok());
        assert!(
            failures.try_recv().is_err(),
            "an end during shutdown is no failure"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_restartable_task_is_started_again_with_backoff_and_counted() {
        let (_stop, stopping) = watch::channel(false);
        let metrics = Arc::new(Metrics::new());
        let (supervisor, _failures) = Supervisor::new(stopping, metrics.clone());
        let starts = Arc::new(AtomicUsize::new(0));
        let counted = starts.clone();
        let task = supervisor.restartable("purge", move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    panic!("purge bug {n}");
                }
                std::future::pending::<()>().await;
            }
        });
        // 1 s + 2 s + 4 s of backoff.
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 4);
        assert!(
            metrics
                .render()
                .contains(r#"token_sidecar_task_restarts_total{task="purge"} 3"#)
        );
        task.abort();
    }

    #[tokio::test]
    async fn aborting_the_supervisor_stops_its_task() {
        let (_stop, stopping) = watch::channel(false);
        let (supervisor, _failures) = Supervisor::new(stopping, Arc::new(Metrics::new()));
        let (alive, mut gone) = mpsc::channel::<()>(1);
        let outer = supervisor.critical("sync", async move {
            let _alive = alive;
            std::future::pending::<()>().await;
            Ok(())
        });
        outer.abort();
        assert!(
            gone.recv().await.is_none(),
            "the task was dropped with its supervisor"
        );
    }
}
