//! A small fault-injecting TCP proxy for tests: forwards bytes between a client and an
//! upstream server, and can hold the server→client direction (so broker confirms are
//! withheld while publishes still go through) or sever every connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub port: u16,
    hold: watch::Sender<bool>,
    /// Bumped to sever all current connections.
    generation: Arc<AtomicU64>,
    sever: watch::Sender<u64>,
    /// While set, new connections are closed at once (the upstream looks down).
    down: Arc<AtomicBool>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream` (host:port).
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (hold, hold_rx) = watch::channel(false);
        let (sever, sever_rx) = watch::channel(0u64);
        let upstream = upstream.to_owned();
        let down = Arc::new(AtomicBool::new(false));
        let is_down = Arc::clone(&down);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if is_down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, None, sever_rx.clone()));
                tokio::spawn(pump(sr, cw, Some(hold_rx.clone()), sever_rx.clone()));
            }
        });
        Proxy {
            port,
            hold,
            generation: Arc::new(AtomicU64::new(0)),
            sever,
            down,
        }
    }

    /// Makes the upstream look down (refuse new connections, cut current ones) or back up.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.sever_all();
        }
    }

    /// Stops forwarding server→client bytes until `release`.
    pub fn hold_replies(&self) {
        let _ = self.hold.send(true);
    }

    pub fn release(&self) {
        let _ = self.hold.send(false);
    }

    /// Closes every connection open now.
    pub fn sever_all(&self) {
        let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = self.sever.send(g);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut hold: Option<watch::Receiver<bool>>,
    mut sever: watch::Receiver<u64>,
) {
    let start_gen = *sever.borrow();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(h) = hold.as_mut() {
            while *h.borrow() {
                tokio::select! {
                    r = h.changed() => if r.is_err() { return },
                    _ = sever.changed() => if *sever.borrow() != start_gen { return },
                }
            }
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
            _ = sever.changed() => if *sever.borrow() != start_gen { return } else { continue },
            _ = async { match hold.as_mut() { Some(h) => { let _ = h.changed().await; } None => std::future::pending().await } } => continue,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
