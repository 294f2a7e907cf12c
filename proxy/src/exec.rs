//! The executor hyper runs its connection tasks on: the current worker's `LocalSet`.

use std::future::Future;

/// Spawns futures on the current worker's `LocalSet`; lets hyper run `!Send`
/// connection tasks (HTTP/2 streams, upstream connections) on the owning worker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
    F::Output: 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}
