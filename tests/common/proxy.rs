//! A small fault-injecting TCP proxy for tests. Each direction of each connection is a reader
//! and a writer joined by a short queue, so faults apply per direction without blocking the
//! other one: hold the server→client bytes (confirms withheld while publishes go through),
//! blackhole both directions (no RST, the peer just goes quiet), add latency, limit bandwidth,
//! sever or reset every connection, or cut the next server→client chunk in half and then close
//! (FIN) or reset (RST) — a message truncated mid-frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How a connection ends when the proxy cuts it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cut {
    /// An orderly close (FIN).
    Fin,
    /// An abortive close (RST, SO_LINGER 0).
    Reset,
}

/// A cut request: generation, how, and whether to wait for the middle of the next
/// server→client chunk.
type CutOrder = (u64, Cut, bool);

struct Faults {
    hold: watch::Sender<bool>,
    blackhole: watch::Sender<bool>,
    latency_ms: AtomicU64,
    /// Bytes per second per direction; 0 is unlimited.
    rate: AtomicU64,
    down: AtomicBool,
    cut: watch::Sender<CutOrder>,
}

pub struct Proxy {
    pub port: u16,
    faults: Arc<Faults>,
    upstream: Arc<std::sync::Mutex<String>>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream` (host:port).
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Faults {
            hold: watch::channel(false).0,
            blackhole: watch::channel(false).0,
            latency_ms: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            down: AtomicBool::new(false),
            cut: watch::channel((0, Cut::Fin, false)).0,
        });
        let upstream = Arc::new(std::sync::Mutex::new(upstream.to_owned()));
        let target = Arc::clone(&upstream);
        let f = Arc::clone(&faults);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if f.down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let addr = target.lock().unwrap().clone();
                let Ok(server) = TcpStream::connect(&addr).await else {
                    continue;
                };
                connect_pair(client, server, &f);
            }
        });
        Proxy {
            port,
            faults,
            upstream,
        }
    }

    /// Sends new connections to another upstream (a DNS name moving to a promoted standby).
    pub fn set_upstream(&self, upstream: &str) {
        *self.upstream.lock().unwrap() = upstream.to_owned();
    }

    /// Makes the upstream look down (refuse new connections, cut current ones) or back up.
    pub fn set_down(&self, down: bool) {
        self.faults.down.store(down, Ordering::SeqCst);
        if down {
            self.sever_all();
        }
    }

    /// Stops forwarding server→client bytes until `release`; a `sever_all`/`reset_all` before
    /// the release drops what was held.
    pub fn hold_replies(&self) {
        self.faults.hold.send_replace(true);
    }

    pub fn release(&self) {
        self.faults.hold.send_replace(false);
    }

    /// Stops forwarding in both directions (connections stay open, nothing is sent).
    pub fn blackhole(&self, on: bool) {
        self.faults.blackhole.send_replace(on);
    }

    /// Delays every chunk by `latency` in each direction.
    pub fn set_latency(&self, latency: Duration) {
        self.faults
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// Limits each direction of each connection to `bytes_per_sec` (0: unlimited).
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.faults.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Closes every connection open now (FIN).
    pub fn sever_all(&self) {
        self.cut(Cut::Fin, false);
    }

    /// Resets every connection open now (RST).
    pub fn reset_all(&self) {
        self.cut(Cut::Reset, false);
    }

    /// Forwards only the first half of the next server→client chunk of every open connection,
    /// then closes it with `how`: the client sees a message truncated mid-frame.
    pub fn truncate_next(&self, how: Cut) {
        self.cut(how, true);
    }

    fn cut(&self, how: Cut, midway: bool) {
        let g = self.faults.cut.borrow().0 + 1;
        self.faults.cut.send_replace((g, how, midway));
    }
}

fn connect_pair(client: TcpStream, server: TcpStream, f: &Arc<Faults>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // Set when either direction ends by a cut, so every half is dropped together.
    let dead = watch::channel(false).0;
    let gen0 = f.cut.borrow().0;
    for (from, to, replies) in [(cr, sw, false), (sr, cw, true)] {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(read_side(from, tx, Arc::clone(f), dead.subscribe()));
        let d = Dir {
            replies,
            gen0,
            f: Arc::clone(f),
            dead: dead.clone(),
        };
        tokio::spawn(d.write_side(rx, to));
    }
}

async fn read_side(
    mut from: OwnedReadHalf,
    tx: mpsc::Sender<(Instant, Vec<u8>)>,
    f: Arc<Faults>,
    mut dead: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
            _ = dead.wait_for(|d| *d) => return,
        };
        let due = Instant::now() + Duration::from_millis(f.latency_ms.load(Ordering::SeqCst));
        if tx.send((due, buf[..n].to_vec())).await.is_err() {
            return;
        }
    }
}

/// The writing half of one direction, where the faults are applied.
struct Dir {
    /// Server→client (where `hold` and truncation apply).
    replies: bool,
    gen0: u64,
    f: Arc<Faults>,
    dead: watch::Sender<bool>,
}

impl Dir {
    async fn write_side(self, mut rx: mpsc::Receiver<(Instant, Vec<u8>)>, mut to: OwnedWriteHalf) {
        let mut cut = self.f.cut.subscribe();
        let mut dead = self.dead.subscribe();
        loop {
            let chunk = tokio::select! {
                c = rx.recv() => match c { Some(c) => c, None => return },
                c = cut.wait_for(|c| c.0 != self.gen0 && !c.2) => {
                    let how = c.map(|c| c.1).unwrap_or(Cut::Fin);
                    return self.close(to, how);
                }
                _ = dead.wait_for(|d| *d) => return,
            };
            let (due, mut bytes) = chunk;
            tokio::time::sleep_until(due).await;
            if !self.wait_open(&mut cut).await {
                let how = cut.borrow().1;
                return self.close(to, how);
            }
            let order = *cut.borrow();
            let truncate = self.replies && order.0 != self.gen0 && order.2;
            if truncate {
                bytes.truncate(bytes.len().div_ceil(2));
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
            if truncate {
                return self.close(to, order.1);
            }
            let rate = self.f.rate.load(Ordering::SeqCst);
            if rate > 0 {
                let secs = bytes.len() as f64 / rate as f64;
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            }
        }
    }

    /// Waits while this direction is held or blackholed; false when an immediate cut came.
    async fn wait_open(&self, cut: &mut watch::Receiver<CutOrder>) -> bool {
        let mut hold = self.f.hold.subscribe();
        let mut hole = self.f.blackhole.subscribe();
        loop {
            // A cut ordered while held wins over a release that follows it: the held bytes
            // are dropped, never delivered (a test relies on this to lose withheld confirms).
            let c = *cut.borrow();
            if c.0 != self.gen0 && !c.2 {
                return false;
            }
            let held = self.replies && *hold.borrow();
            if !held && !*hole.borrow() {
                return true;
            }
            tokio::select! {
                _ = hold.changed() => {}
                _ = hole.changed() => {}
                _ = cut.wait_for(|c| c.0 != self.gen0 && !c.2) => return false,
            }
        }
    }

    fn close(&self, to: OwnedWriteHalf, how: Cut) {
        if how == Cut::Reset {
            // SO_LINGER 0 and no shutdown: the socket is closed with an RST once the read
            // half (told through `dead`) is dropped too.
            let _ = to.as_ref().set_zero_linger();
            to.forget();
        }
        self.dead.send_replace(true);
    }
}
