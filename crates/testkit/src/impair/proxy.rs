//! The tokio shell around [`ProxyCore`]: sockets, one reader task per upstream socket, timers.
//!
//! One loop owns the core: it waits for a client datagram, a server datagram (from the reader
//! tasks, stamped with their arrival time), the core's next timeout, or shutdown; after each it
//! sends everything the core releases, in order, and tells the core how each send went. Because
//! only this loop sends, the order the core hands out is the order datagrams leave, which is
//! what the report counts. On shutdown it flushes every waiting datagram, then reports.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::Impairment;
use super::relay::{Dir, ProxyCore};
use super::report::ProxyReport;

/// Receive buffer: the largest UDP payload, so the proxy relays even oversized or hostile
/// datagrams byte for byte instead of truncating them.
const RECV_BUF: usize = 65_536;

/// Server datagrams queued between the reader tasks and the loop: many ticks of audio for many
/// clients; when full, readers wait and the kernel buffers the rest.
const CHANNEL_DEPTH: usize = 4096;

/// How long the loop sleeps when nothing is scheduled; it wakes earlier on any input.
const IDLE_WAKE: Duration = Duration::from_secs(3600);

/// A bound impairment proxy, ready to [`run`](Proxy::run).
#[derive(Debug)]
pub struct Proxy {
    /// The socket listeners talk to.
    listen: UdpSocket,
    /// The server every client is relayed to.
    upstream: SocketAddr,
    /// What to do to the server's datagrams.
    imp: Impairment,
}

impl Proxy {
    /// Binds the listening socket (port 0 picks a free one) after checking `imp`; an invalid
    /// impairment is `InvalidInput` with the reason.
    pub async fn bind(
        listen: SocketAddr,
        upstream: SocketAddr,
        imp: Impairment,
    ) -> io::Result<Proxy> {
        imp.validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listen = UdpSocket::bind(listen).await.map_err(|e| {
            io::Error::new(e.kind(), format!("cannot bind the proxy to {listen}: {e}"))
        })?;
        Ok(Proxy {
            listen,
            upstream,
            imp,
        })
    }

    /// The address listeners should connect to (the real port when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listen.local_addr()
    }

    /// Relays until `shutdown` completes, then flushes what is still waiting and returns the
    /// account of everything it did.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> ProxyReport {
        let Proxy {
            listen,
            upstream,
            imp,
        } = self;
        let listen_addr = listen
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0));
        let mut core = ProxyCore::new(listen_addr, upstream, imp);
        let mut sockets: Vec<Arc<UdpSocket>> = Vec::new();
        let mut readers = JoinSet::new();
        let (tx, mut rx) = mpsc::channel::<(usize, Bytes, Instant)>(CHANNEL_DEPTH);
        let mut buf = vec![0u8; RECV_BUF];
        tokio::pin!(shutdown);

        loop {
            let wake = core
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + IDLE_WAKE);
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                r = listen.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        let now = Instant::now();
                        let idx = match core.lookup(from) {
                            Some(i) => Some(i),
                            None => {
                                new_client(&mut core, from, upstream, &mut sockets, &mut readers, &tx)
                                    .await
                            }
                        };
                        if let Some(i) = idx {
                            let bytes = Bytes::copy_from_slice(&buf[..n]);
                            core.handle(now, i, Dir::Upstream, bytes);
                        }
                    }
                    // Unconnected UDP: errors here are transient (e.g. an ICMP report); the
                    // pause keeps a persistent one from spinning the loop.
                    Err(e) => {
                        tracing::debug!("proxy receive: {e}");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                },
                Some((i, bytes, at)) = rx.recv() => core.handle(at, i, Dir::Downstream, bytes),
                () = tokio::time::sleep_until(wake) => {}
            }
            pump(&mut core, &listen, &sockets, Instant::now()).await;
        }
        // Flush: everything still waiting leaves now, in schedule order.
        pump(&mut core, &listen, &sockets, Instant::now() + IDLE_WAKE).await;
        readers.abort_all();
        core.report()
    }
}

/// Opens the upstream socket of a new client and starts its reader.
async fn new_client(
    core: &mut ProxyCore,
    from: SocketAddr,
    upstream: SocketAddr,
    sockets: &mut Vec<Arc<UdpSocket>>,
    readers: &mut JoinSet<()>,
    tx: &mpsc::Sender<(usize, Bytes, Instant)>,
) -> Option<usize> {
    let sock = match open_upstream(upstream).await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::warn!("proxy: no upstream socket for {from}: {e}");
            core.refuse();
            return None;
        }
    };
    let idx = core.add_client(from)?;
    debug_assert_eq!(idx, sockets.len());
    sockets.push(Arc::clone(&sock));
    readers.spawn(read_upstream(idx, sock, tx.clone()));
    tracing::debug!("proxy: client {idx} is {from}");
    Some(idx)
}

/// A socket connected to the server, on loopback when the server is: one per client, so the
/// server tells listeners apart.
async fn open_upstream(upstream: SocketAddr) -> io::Result<UdpSocket> {
    let ip: IpAddr = match (upstream.ip().is_loopback(), upstream.is_ipv4()) {
        (true, true) => Ipv4Addr::LOCALHOST.into(),
        (true, false) => Ipv6Addr::LOCALHOST.into(),
        (false, true) => Ipv4Addr::UNSPECIFIED.into(),
        (false, false) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let s = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
    s.connect(upstream).await?;
    Ok(s)
}

/// Forwards one client's server datagrams to the loop, stamped with their arrival time.
async fn read_upstream(
    idx: usize,
    sock: Arc<UdpSocket>,
    tx: mpsc::Sender<(usize, Bytes, Instant)>,
) {
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        match sock.recv(&mut buf).await {
            Ok(n) => {
                let item = (idx, Bytes::copy_from_slice(&buf[..n]), Instant::now());
                if tx.send(item).await.is_err() {
                    return;
                }
            }
            // A connected socket hears of a closed server port; the server may come back.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => {
                tracing::warn!("proxy: upstream socket of client {idx} failed: {e}");
                return;
            }
        }
    }
}

/// Sends everything the core releases at `now`, in its order, reporting each send back.
async fn pump(core: &mut ProxyCore, listen: &UdpSocket, sockets: &[Arc<UdpSocket>], now: Instant) {
    while let Some((i, dir, t)) = core.poll_transmit(now) {
        let res = match dir {
            Dir::Downstream => match core.addr(i) {
                Some(a) => listen.send_to(&t.bytes, a).await,
                None => Err(io::Error::other("unknown client")),
            },
            Dir::Upstream => match sockets.get(i) {
                Some(s) => s.send(&t.bytes).await,
                None => Err(io::Error::other("unknown client")),
            },
        };
        if let Err(e) = &res {
            tracing::debug!("proxy send ({dir:?}, client {i}): {e}");
        }
        core.on_sent(i, dir, &t, res.is_ok());
    }
}
