//! Session threads: each runs its own single-threaded tokio runtime, and every session lives on
//! one of them from accept to end.
//!
//! A request through the relay is a read from one socket and a write to the other, twice. On a
//! work-stealing runtime the task woken by a socket may run on another worker than the one whose
//! poller saw the event, and every such hand-over wakes a parked thread (a futex and a context
//! switch) and keeps the scheduler's bookkeeping (clock reads, its poll-time average) busy per
//! batch. Here a session's two directions, its sockets, its link to a pooled server connection
//! and what its cache spawns stay on the thread the session was given: in session mode a relayed
//! request wakes no other thread of the proxy, as in PgBouncer's single event loop, while several
//! threads still use several cores. Not everything is local: a pooled server connection is polled
//! by the thread that opened it (or the main runtime, for connections its upkeep opened), and a
//! Redis L2 is reached through connections on the main runtime. A new session goes to the thread
//! serving the fewest.

use std::{
    io,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use tokio::{runtime::Handle, sync::oneshot};

use crate::transport::Stream;

/// The session threads of one proxy; dropping them stops the threads (their tasks are dropped).
pub(crate) struct SessionThreads {
    threads: Vec<SessionThread>,
}

struct SessionThread {
    handle: Handle,
    /// Sessions on this thread, for placing the next one.
    sessions: Arc<AtomicUsize>,
    /// Dropped (or sent) to stop the thread.
    _stop: oneshot::Sender<()>,
}

/// A session counted on its thread until it ends.
pub(crate) struct Placed {
    sessions: Arc<AtomicUsize>,
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.sessions.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SessionThreads {
    /// Starts `count` threads (at least one).
    pub(crate) fn start(count: usize) -> io::Result<Self> {
        let mut threads = Vec::with_capacity(count.max(1));
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new().name(format!("strata-session-{i}")).spawn(move || {
                // Runs the thread's tasks until the proxy lets go of the sender; dropping the
                // runtime then drops whatever is left on it.
                runtime.block_on(async move {
                    let _ = stopped.await;
                });
            })?;
            threads.push(SessionThread { handle, sessions: Arc::new(AtomicUsize::new(0)), _stop: stop });
        }
        Ok(Self { threads })
    }

    /// The thread serving the fewest sessions, counted until the returned guard drops.
    pub(crate) fn place(&self) -> (&Handle, Placed) {
        let thread = self
            .threads
            .iter()
            .min_by_key(|t| t.sessions.load(Ordering::Acquire))
            .unwrap_or_else(|| unreachable!("at least one thread is started"));
        thread.sessions.fetch_add(1, Ordering::AcqRel);
        (&thread.handle, Placed { sessions: thread.sessions.clone() })
    }

    /// How many threads there are.
    pub(crate) fn len(&self) -> usize {
        self.threads.len()
    }
}

/// An accepted client socket on its way to a session thread: taken off the accepting runtime's
/// poller and registered with the session thread's when it arrives.
pub(crate) enum Handoff {
    Tcp(std::net::TcpStream),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream),
}

impl Handoff {
    /// Takes an accepted plain socket off this runtime (other streams cannot move).
    pub(crate) fn take(stream: Stream) -> io::Result<Self> {
        match stream {
            Stream::Tcp(s) => s.into_std().map(Self::Tcp),
            #[cfg(unix)]
            Stream::Unix(s) => s.into_std().map(Self::Unix),
            _ => Err(io::Error::other("only a freshly accepted socket moves to a session thread")),
        }
    }

    /// Registers the socket with the runtime this runs on.
    pub(crate) fn arrive(self) -> io::Result<Stream> {
        match self {
            Self::Tcp(s) => tokio::net::TcpStream::from_std(s).map(Stream::Tcp),
            #[cfg(unix)]
            Self::Unix(s) => tokio::net::UnixStream::from_std(s).map(Stream::Unix),
        }
    }
}
