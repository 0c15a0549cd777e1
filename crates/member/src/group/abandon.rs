//! A command whose connection is gone stops retrying through the group.
//!
//! An initiator that lost patience with a member (its command waited on a placement group
//! with no reachable primary) drops the connection and sends the command again through
//! another member. The first member's attempt must not go on retrying until its own I/O
//! deadline: it would hold the blocking thread and the chunk's locks, and, if the group
//! came back meanwhile, write old data over what the initiator wrote since.
//!
//! ```text
//!  portal: connection ends ─► its flag set
//!  blocking thread: for_command(flag) { lu.execute ─► GroupDevice ─► block_on(scoped(…)) }
//!  group: at_primary ─ fails ─ backoff: abandoned()? ─► error, no further attempt
//! ```

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

thread_local! {
    static COMMAND: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

tokio::task_local! {
    static GONE: Arc<AtomicBool>;
}

/// Run `f` (a command executing on this thread) as part of a connection that sets `gone`
/// when it ends.
pub fn for_command<T>(gone: &Arc<AtomicBool>, f: impl FnOnce() -> T) -> T {
    COMMAND.with(|c| *c.borrow_mut() = Some(gone.clone()));
    let out = f();
    COMMAND.with(|c| *c.borrow_mut() = None);
    out
}

/// Run `f` (a group operation started by the command on this thread) so that it can tell
/// when the command's connection is gone.
pub async fn scoped<F: Future>(f: F, gone: Option<Arc<AtomicBool>>) -> F::Output {
    match gone {
        Some(flag) => GONE.scope(flag, f).await,
        None => f.await,
    }
}

/// The connection flag of the command running on this thread, if any.
pub(crate) fn current() -> Option<Arc<AtomicBool>> {
    COMMAND.with(|c| c.borrow().clone())
}

/// True when the command this group operation serves has lost its connection.
pub(crate) fn abandoned() -> bool {
    GONE.try_with(|g| g.load(Ordering::Acquire))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_operation_sees_its_commands_connection_end() {
        let gone = Arc::new(AtomicBool::new(false));
        let flag = for_command(&gone, current);
        assert!(flag.is_some());
        assert!(current().is_none(), "cleared after the command");
        assert!(!scoped(async { abandoned() }, flag.clone()).await);
        gone.store(true, Ordering::Release);
        assert!(scoped(async { abandoned() }, flag).await);
        assert!(!abandoned(), "outside any command");
    }
}
