//! `--threads N`: the threads of the engine's other N-1 workers (see `engine::queues`).
//!
//! Theory of operation: the workers' engines are made on the main thread with the first one
//! (their TAP queues, epoll sets and wakers exist before the sandbox), and their threads start
//! after it, because the sandbox may join a user namespace, which a threaded process cannot.
//! [`Workers::spawn`] returns once every thread is running (its own start-up, glibc's `rseq`
//! registration among it, is then over); each waits on its channel until [`Go::release`]: in daemon mode that comes
//! after the seccomp filter, which `TSYNC` puts on every thread, so no worker touches a guest
//! frame unfiltered. If start-up fails before that, the channels are dropped and the threads
//! end without running. A worker runs until its TAP queue goes away; the process ends with the
//! first worker.
#![forbid(unsafe_code)]

use std::io;
use std::sync::mpsc;

use crate::engine::Engine;

/// Workers made but not started.
#[derive(Default)]
pub struct Workers {
    engines: Vec<Engine>,
}

/// The started workers' go signals.
#[must_use = "the workers wait until released"]
pub struct Go {
    senders: Vec<mpsc::Sender<()>>,
}

impl Workers {
    pub fn new(engines: Vec<Engine>) -> Workers {
        Workers { engines }
    }

    /// Start one thread per worker and wait until each runs (a new thread's own start-up,
    /// such as glibc registering its `rseq` area, must be over before the seccomp filter);
    /// each then waits for [`Go::release`].
    pub fn spawn(self) -> io::Result<Go> {
        let mut senders = Vec::new();
        let (up_tx, up_rx) = mpsc::channel::<()>();
        for (i, mut engine) in self.engines.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel::<()>();
            let name = format!("tapwire-q{}", i + 1);
            let up = up_tx.clone();
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    let _ = up.send(());
                    drop(up);
                    if rx.recv().is_err() {
                        return;
                    }
                    match engine.run() {
                        Ok(_) => tracing::info!("{name}: its TAP queue is gone"),
                        Err(e) => tracing::error!("{name}: {e}"),
                    }
                })
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("--threads: starting a worker: {e}"))
                })?;
            senders.push(tx);
        }
        drop(up_tx);
        for _ in &senders {
            up_rx
                .recv()
                .map_err(|_| io::Error::other("--threads: a worker died starting"))?;
        }
        Ok(Go { senders })
    }
}

impl Go {
    /// Let the workers run.
    pub fn release(self) {
        for tx in self.senders {
            let _ = tx.send(());
        }
    }
}
