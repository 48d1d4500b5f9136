//! A thread of its own for the ingest listeners.
//!
//! An event for thousands of endpoints leaves the relay delivering at
//! full speed for seconds; on the shared runtime a new POST would wait in
//! the same queues as those deliveries, twice (for its request, then for
//! its commit's answer). Served on its own thread, with its own runtime,
//! the POST waits only for the operating system's scheduler, which shares
//! the CPU between threads fairly, and for its commit.

use std::io;
use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// A current-thread runtime on a named thread. Tasks spawned on
/// [`ServingThread::handle`] run there until the value is dropped, which
/// ends the runtime (dropping the tasks still on it) and joins the thread.
pub struct ServingThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServingThread {
    /// Starts the thread `name` and its runtime.
    pub fn start(name: &str) -> io::Result<ServingThread> {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // Runs the spawned tasks until the stop is sent or dropped.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(ServingThread {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where to spawn (and register sockets) for this thread.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for ServingThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // The runtime is dropped on its own thread, outside any other
            // runtime, which is where tokio allows it.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tasks_run_on_the_thread_and_end_with_it() {
        let thread = ServingThread::start("hookrelay-test").expect("thread");
        let (tx, rx) = std::sync::mpsc::channel();
        thread.handle().spawn(async move {
            let name = std::thread::current().name().map(str::to_string);
            tx.send(name).expect("send");
        });
        let name = rx.recv_timeout(Duration::from_secs(5)).expect("ran");
        assert_eq!(name.as_deref(), Some("hookrelay-test"));

        // A task still waiting when the thread ends is dropped with it.
        let (held, released) = oneshot::channel::<()>();
        let (dropped_tx, dropped_rx) = std::sync::mpsc::channel();
        struct Signal(std::sync::mpsc::Sender<()>);
        impl Drop for Signal {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let signal = Signal(dropped_tx);
        thread.handle().spawn(async move {
            let _signal = signal;
            let _ = released.await;
        });
        drop(thread);
        dropped_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the task was dropped when the thread ended");
        drop(held);
    }
}
