//! A TCP proxy between a client under test and a test `redis-server`, to break the link on
//! purpose: hold it half-open, swallow it, slow it down, refuse new connections, or reset every
//! live connection.
//!
//! Everything runs on tokio tasks spawned on the runtime that called [`Proxy::start`]. Nothing
//! here ever connects anywhere but the `upstream` address it is given.
//!
//! Modes ([`Proxy::set_mode`]) apply to live and future connections:
//!
//! - [`Mode::Pass`]: bytes flow both ways.
//! - [`Mode::Hold`]: no byte is forwarded either way and nothing is closed (no FIN, no RST): a
//!   half-open link. Each direction stops reading its source; a chunk already read when the hold
//!   began stays in the proxy's buffer. Nothing is dropped: on the return to `Pass`, held chunks
//!   are forwarded first, then whatever the kernel buffered meanwhile, in order. An end of stream
//!   seen during the hold is forwarded only after it, too. New connections are accepted (and
//!   connected upstream) but held as well.
//! - [`Mode::Blackhole`]: everything is read and thrown away, both ways; nothing is answered
//!   and nothing is closed. Unlike `Hold`, the senders never block (their bytes are consumed),
//!   and what was sent meanwhile is lost for good: a request swallowed by the blackhole never
//!   gets a reply, so a client that pipelines (redis-rs's multiplexed connection) stays out of
//!   step on that connection after the return to `Pass`. New connections are accepted (and
//!   connected upstream) and swallowed as well.
//! - [`Mode::Latency`]: every chunk is forwarded, in order, `d` after the proxy read it, in each
//!   direction: a request/reply round trip takes at least `2 d`. Chunks read together are
//!   delayed together (the delay is not cumulative), so pipelined requests keep overlapping.
//! - [`Mode::Withhold`]: client bytes reach the server, server bytes are read and discarded: a
//!   request takes effect but its reply is lost.
//! - [`Mode::Refuse`]: new connections are accepted and reset at once (RST, never reaching
//!   upstream), as close as an accepting socket gets to a refused connection. Live connections
//!   keep flowing as in `Pass`.
//!
//! A mode can be applied to one kind of connection only ([`Proxy::set_mode_where`] with a
//! [`Target`]), the others passing: a connection is a *subscriber* connection from the moment
//! its client sends a `SUBSCRIBE` command (also `PSUBSCRIBE`, `SSUBSCRIBE`, `UNSUBSCRIBE`: a
//! bulk string ending in `SUBSCRIBE`, in any case), and a *data* connection until then. So a
//! subscriber that connects while a fault targets [`Target::Data`] is treated as a data
//! connection until its `SUBSCRIBE` gets through, and the chunk that carries the `SUBSCRIBE`
//! of a new subscriber is the first one a [`Target::Subscriber`] fault stops. (A data
//! connection that sends a key or value ending in `SUBSCRIBE` would be misread: tests never do.)
//! [`Mode::Refuse`] acts when a connection is accepted, before it has sent anything, so it
//! only targets [`Target::All`].
//!
//! [`Proxy::cut_all`] resets every live connection on both sides (`SO_LINGER` 0, then close).
//! Dropping the [`Proxy`] stops accepting and cuts every live connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the proxy does with traffic; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways.
    Pass,
    /// Forward nothing and close nothing: every link is half-open.
    Hold,
    /// Reset new connections at once; live ones keep flowing.
    Refuse,
    /// Forward what clients send, swallow what the server answers: requests take effect,
    /// replies never arrive.
    Withhold,
    /// Swallow everything both ways, answer nothing, close nothing.
    Blackhole,
    /// Forward every chunk `d` after it was read, in each direction, in order.
    Latency(Duration),
}

/// Which connections a mode applies to ([`Proxy::set_mode_where`]); the others pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every connection.
    All,
    /// Connections whose client has not sent a `SUBSCRIBE` (yet).
    Data,
    /// Connections whose client has sent a `SUBSCRIBE`.
    Subscriber,
}

/// The current fault: a mode and the connections it applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fault {
    mode: Mode,
    target: Target,
}

impl Fault {
    /// The mode that applies to a connection of the given kind.
    fn mode_for(self, subscriber: bool) -> Mode {
        let applies = match self.target {
            Target::All => true,
            Target::Data => !subscriber,
            Target::Subscriber => subscriber,
        };
        if applies { self.mode } else { Mode::Pass }
    }
}

/// A proxy on `127.0.0.1:<ephemeral>` forwarding every accepted connection to one upstream.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    fault: watch::Sender<Fault>,
    /// A generation counter: every [`Proxy::cut_all`] bumps it, and every connection live at
    /// that moment resets itself.
    cut: watch::Sender<u64>,
    live: AtomicUsize,
    /// Live connections that have sent a `SUBSCRIBE`.
    subscribers: AtomicUsize,
    accepted: AtomicUsize,
    /// Bytes to look for in what clients send ([`Proxy::count_requests_with`]).
    marker: std::sync::Mutex<Option<Vec<u8>>>,
    /// Client → server chunks that contained the marker.
    marked: AtomicUsize,
}

/// One connection's state, shared by its two directions; counts it as live for as long as it
/// exists, however its task ends (even aborted).
struct Conn {
    shared: Arc<Shared>,
    subscriber: AtomicBool,
}

impl Conn {
    fn new(shared: &Arc<Shared>) -> Conn {
        shared.live.fetch_add(1, Ordering::SeqCst);
        Conn {
            shared: Arc::clone(shared),
            subscriber: AtomicBool::new(false),
        }
    }

    fn is_subscriber(&self) -> bool {
        self.subscriber.load(Ordering::SeqCst)
    }

    /// The mode that applies to this connection now.
    fn mode(&self, fault: &watch::Receiver<Fault>) -> Mode {
        fault.borrow().mode_for(self.is_subscriber())
    }

    /// Looks at what the client sent: a `SUBSCRIBE` makes this a subscriber connection, and
    /// the marker of [`Proxy::count_requests_with`] is counted.
    fn inspect_request(&self, chunk: &[u8]) {
        if !self.is_subscriber() && sends_subscribe(chunk) {
            self.subscriber.store(true, Ordering::SeqCst);
            self.shared.subscribers.fetch_add(1, Ordering::SeqCst);
            // Wake this connection's other direction, which may be waiting out a fault that
            // no longer applies to it (or now does).
            self.shared.fault.send_modify(|_| {});
        }
        let marker = self.shared.marker.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = marker.as_deref()
            && chunk.windows(m.len().max(1)).any(|w| w == m)
        {
            self.shared.marked.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.live.fetch_sub(1, Ordering::SeqCst);
        if self.is_subscriber() {
            self.shared.subscribers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Whether a client chunk carries a `SUBSCRIBE` command (or `PSUBSCRIBE`, `SSUBSCRIBE`,
/// `UNSUBSCRIBE`): a RESP bulk string ending in `SUBSCRIBE`, in any case.
fn sends_subscribe(chunk: &[u8]) -> bool {
    const WORD: &[u8] = b"SUBSCRIBE\r\n";
    chunk
        .windows(WORD.len())
        .any(|w| w.eq_ignore_ascii_case(WORD))
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards every accepted connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("proxy: local addr");
        let shared = Arc::new(Shared {
            fault: watch::Sender::new(Fault {
                mode: Mode::Pass,
                target: Target::All,
            }),
            cut: watch::Sender::new(0),
            live: AtomicUsize::new(0),
            subscribers: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            marker: std::sync::Mutex::new(None),
            marked: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, upstream, Arc::clone(&shared)));
        Proxy {
            addr,
            shared,
            accept,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:PORT/` for the proxy's port.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.addr.port())
    }

    /// Switches mode for every connection; it applies to live and future connections.
    pub fn set_mode(&self, m: Mode) {
        self.set_mode_where(m, Target::All);
    }

    /// Switches mode for the connections of one kind (see the module documentation); the
    /// others pass. Applies to live and future connections, and replaces any earlier mode.
    ///
    /// Panics for [`Mode::Refuse`] with another target than [`Target::All`]: a connection is
    /// refused before it has said what it is.
    pub fn set_mode_where(&self, mode: Mode, target: Target) {
        assert!(
            mode != Mode::Refuse || target == Target::All,
            "Mode::Refuse applies to every new connection (Target::All), not to {target:?}"
        );
        self.shared.fault.send_replace(Fault { mode, target });
    }

    /// Resets every live connection on both sides. Returns at once; each connection closes when
    /// its task next runs, before it forwards anything more.
    pub fn cut_all(&self) {
        self.shared.cut.send_modify(|generation| *generation += 1);
    }

    /// Connections currently open through the proxy.
    pub fn live(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Connections currently open through the proxy that have sent a `SUBSCRIBE`.
    pub fn live_subscribers(&self) -> usize {
        self.shared.subscribers.load(Ordering::SeqCst)
    }

    /// From now on, counts what clients send that contains `marker` (e.g. a key): each such
    /// chunk is one request (a command or a pipeline) that names it, i.e. one round trip, since
    /// a client waits for the reply before it sends the next one. Resets the count.
    pub fn count_requests_with(&self, marker: &[u8]) {
        *self.shared.marker.lock().unwrap_or_else(|p| p.into_inner()) = Some(marker.to_vec());
        self.shared.marked.store(0, Ordering::SeqCst);
    }

    /// Requests counted since [`count_requests_with`](Self::count_requests_with).
    pub fn requests(&self) -> usize {
        self.shared.marked.load(Ordering::SeqCst)
    }

    /// Connections accepted so far, including those reset at once in [`Mode::Refuse`].
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_all();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // Transient (for example out of descriptors): back off instead of spinning.
                eprintln!("proxy: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.fault.borrow().mode == Mode::Refuse {
            reset(client);
            continue;
        }
        let conn = Conn::new(&shared);
        let cut = shared.cut.subscribe();
        let fault = shared.fault.subscribe();
        tokio::spawn(serve(client, upstream, fault, cut, conn));
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    fault: watch::Receiver<Fault>,
    mut cut: watch::Receiver<u64>,
    conn: Conn,
) {
    let connect = tokio::select! {
        biased;
        _ = cut.changed() => None,
        r = TcpStream::connect(upstream) => Some(r),
    };
    let mut server = match connect {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            eprintln!("proxy: connect to upstream {upstream} failed: {e}");
            reset(client);
            return;
        }
        None => {
            reset(client);
            return;
        }
    };
    let was_cut = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let both = async {
            tokio::try_join!(
                pump(
                    client_read,
                    server_write,
                    fault.clone(),
                    Direction::Requests,
                    &conn
                ),
                pump(server_read, client_write, fault, Direction::Replies, &conn),
            )
        };
        tokio::select! {
            biased;
            _ = cut.changed() => true,
            // Both ends closed cleanly, or one failed: close the rest normally.
            _ = both => false,
        }
    };
    if was_cut {
        reset(client);
        reset(server);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to server.
    Requests,
    /// Server to client.
    Replies,
}

/// Whether `mode` throws away a chunk going in `direction`.
fn swallows(mode: Mode, direction: Direction) -> bool {
    match mode {
        Mode::Blackhole => true,
        Mode::Withhold => direction == Direction::Replies,
        _ => false,
    }
}

/// Copies `from` to `to` until end of stream (forwarded as a write shutdown). A reader reads
/// chunks and stamps each with the time it is due (now, or now + `d` in [`Mode::Latency`]); a
/// writer forwards them in order when due. Neither reads nor writes while the mode is
/// [`Mode::Hold`]; swallowed chunks are dropped when read, or when due.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    fault: watch::Receiver<Fault>,
    direction: Direction,
    conn: &Conn,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Bounded: a slow writer (latency) slows the reader down rather than buffering without end.
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(64);
    let mut read_fault = fault.clone();
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            unheld(&mut read_fault, conn).await;
            let n = from.read(&mut buf).await?;
            if direction == Direction::Requests && n > 0 {
                conn.inspect_request(&buf[..n]);
            }
            // The hold may have begun while the read was pending (or applies now that the
            // chunk said what the connection is): keep the chunk until it ends.
            unheld(&mut read_fault, conn).await;
            let mode = conn.mode(&read_fault);
            if n > 0 && swallows(mode, direction) {
                continue;
            }
            let due = match mode {
                Mode::Latency(d) => Instant::now() + d,
                _ => Instant::now(),
            };
            let chunk = (n > 0).then(|| buf[..n].to_vec());
            let end = chunk.is_none();
            if tx.send((due, chunk)).await.is_err() || end {
                // The writer is gone (it failed, and reports it), or the stream ended.
                return Ok::<(), io::Error>(());
            }
        }
    };
    let mut write_fault = fault;
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            unheld(&mut write_fault, conn).await;
            match chunk {
                Some(bytes) => {
                    if !swallows(conn.mode(&write_fault), direction) {
                        to.write_all(&bytes).await?;
                    }
                }
                None => return to.shutdown().await,
            }
        }
        Ok(())
    };
    tokio::try_join!(read, write).map(|_| ())
}

/// Returns once the mode that applies to `conn` is not [`Mode::Hold`].
async fn unheld(fault: &mut watch::Receiver<Fault>, conn: &Conn) {
    // Errs only once the sender is gone, which the connection's `Conn` (holding it) rules out.
    let _ = fault
        .wait_for(|f| f.mode_for(conn.is_subscriber()) != Mode::Hold)
        .await;
}

/// Closes `stream` with a reset (RST) rather than an orderly FIN.
fn reset(stream: TcpStream) {
    if let Err(e) = stream.set_zero_linger() {
        eprintln!("proxy: SO_LINGER 0 failed ({e}); closing with FIN instead");
    }
    drop(stream);
}
