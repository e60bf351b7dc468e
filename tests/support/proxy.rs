//! A TCP proxy between a client under test and a test `redis-server`, to break the link on
//! purpose: hold it half-open, refuse new connections, or reset every live connection.
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
//! - [`Mode::Withhold`]: client bytes reach the server, server bytes are read and discarded: a
//!   request takes effect but its reply is lost.
//! - [`Mode::Refuse`]: new connections are accepted and reset at once (RST, never reaching
//!   upstream), as close as an accepting socket gets to a refused connection. Live connections
//!   keep flowing as in `Pass`.
//!
//! [`Proxy::cut_all`] resets every live connection on both sides (`SO_LINGER` 0, then close).
//! Dropping the [`Proxy`] stops accepting and cuts every live connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
}

/// A proxy on `127.0.0.1:<ephemeral>` forwarding every accepted connection to one upstream.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    mode: watch::Sender<Mode>,
    /// A generation counter: every [`Proxy::cut_all`] bumps it, and every connection live at
    /// that moment resets itself.
    cut: watch::Sender<u64>,
    live: AtomicUsize,
    accepted: AtomicUsize,
    /// Bytes to look for in what clients send ([`Proxy::count_requests_with`]).
    marker: std::sync::Mutex<Option<Vec<u8>>>,
    /// Client → server chunks that contained the marker.
    marked: AtomicUsize,
}

/// Counts one live connection for as long as it exists, however its task ends (even aborted).
struct Live(Arc<Shared>);

impl Live {
    fn new(shared: &Arc<Shared>) -> Live {
        shared.live.fetch_add(1, Ordering::SeqCst);
        Live(Arc::clone(shared))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards every accepted connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("proxy: local addr");
        let shared = Arc::new(Shared {
            mode: watch::Sender::new(Mode::Pass),
            cut: watch::Sender::new(0),
            live: AtomicUsize::new(0),
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

    /// Switches mode; it applies to live and future connections.
    pub fn set_mode(&self, m: Mode) {
        self.shared.mode.send_replace(m);
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
        if *shared.mode.borrow() == Mode::Refuse {
            reset(client);
            continue;
        }
        let live = Live::new(&shared);
        let cut = shared.cut.subscribe();
        let mode = shared.mode.subscribe();
        tokio::spawn(serve(client, upstream, mode, cut, live));
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    mut cut: watch::Receiver<u64>,
    live: Live,
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
                    mode.clone(),
                    false,
                    Some(&live.0)
                ),
                pump(server_read, client_write, mode, true, None),
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

/// Copies `from` to `to` until end of stream (forwarded as a write shutdown), never reading or
/// writing while the mode is [`Mode::Hold`].
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    mut mode: watch::Receiver<Mode>,
    replies: bool,
    requests: Option<&Shared>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        unheld(&mut mode).await;
        let n = from.read(&mut buf).await?;
        // The hold may have begun while the read was pending: keep the chunk until it ends.
        unheld(&mut mode).await;
        if n == 0 {
            return to.shutdown().await;
        }
        if replies && *mode.borrow() == Mode::Withhold {
            continue;
        }
        if let Some(shared) = requests {
            let marker = shared.marker.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(m) = marker.as_deref()
                && buf[..n].windows(m.len().max(1)).any(|w| w == m)
            {
                shared.marked.fetch_add(1, Ordering::SeqCst);
            }
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Returns once the mode is not [`Mode::Hold`].
async fn unheld(mode: &mut watch::Receiver<Mode>) {
    // Errs only once the sender is gone, which the connection's `Live` (holding it) rules out.
    let _ = mode.wait_for(|m| *m != Mode::Hold).await;
}

/// Closes `stream` with a reset (RST) rather than an orderly FIN.
fn reset(stream: TcpStream) {
    if let Err(e) = stream.set_zero_linger() {
        eprintln!("proxy: SO_LINGER 0 failed ({e}); closing with FIN instead");
    }
    drop(stream);
}
