//! TCP_NODELAY for the stream client's connections.
//!
//! Why: rabbitmq-stream-client 0.11 connects with Nagle's algorithm on and gives no access to
//! its socket. A small write then waits in the kernel until everything sent before it is
//! acknowledged, and the broker delays its acknowledgement up to 40 ms when it has nothing to
//! answer: the connection handshake (a Tune the broker does not answer, then Open) and every
//! first query after a silent write took 40 ms longer (seen with strace: Open answered
//! 40.3 ms after it was sent), and a publish frame written while another is unconfirmed waits
//! for that confirm. amqprs and walrelay's own PostgreSQL connection set TCP_NODELAY.
//!
//! How, without unsafe code: the process's open sockets are listed in `/proc/self/fd`; each
//! is duplicated with `pidfd_getfd` (Linux 5.6+), which shares the socket itself, so the
//! option set on the copy holds for the client's descriptor; the copy is closed again. Only
//! sockets connected to the given broker address are touched. Best effort: where `/proc` or
//! `pidfd_getfd` is not available (an old kernel, a seccomp profile that refuses it), the
//! connection keeps working with Nagle on, and the debug log says so.

use std::net::SocketAddr;

use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};
use tracing::debug;

/// Sets TCP_NODELAY on every socket of this process connected to one of `peers`. Returns how
/// many it set.
pub fn set_for(peers: &[SocketAddr]) -> usize {
    match try_set_for(peers) {
        Ok(n) => n,
        Err(e) => {
            debug!(error = %e, "could not set TCP_NODELAY on the stream connection (Nagle's algorithm stays on)");
            0
        }
    }
}

fn try_set_for(peers: &[SocketAddr]) -> std::io::Result<usize> {
    let me = pidfd_open(getpid(), PidfdFlags::empty())?;
    let mut set = 0;
    for entry in std::fs::read_dir("/proc/self/fd")?.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // The descriptor may have been closed (or reused) since it was listed: then the copy
        // fails, or is no socket connected to the broker, and is skipped.
        let Ok(copy) = pidfd_getfd(&me, fd, PidfdGetfdFlags::empty()) else {
            continue;
        };
        let peer = rustix::net::getpeername(&copy)
            .ok()
            .flatten()
            .and_then(|a| SocketAddr::try_from(a).ok());
        if peer.is_some_and(|p| peers.contains(&p)) {
            rustix::net::sockopt::set_tcp_nodelay(&copy, true)?;
            set += 1;
        }
    }
    Ok(set)
}

/// [`set_for`] the addresses `host:port` resolves to (what the client connected to is one of
/// them), after the client connected there.
pub async fn set_for_host(host: &str, port: u16) -> usize {
    let peers: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map(Iterator::collect)
        .unwrap_or_default();
    let set = set_for(&peers);
    debug!(
        host,
        port,
        sockets = set,
        "TCP_NODELAY on the stream connections"
    );
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sets_nodelay_on_the_sockets_connected_to_the_peer_only() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = listener.local_addr().unwrap();
        let ours = std::net::TcpStream::connect(peer).unwrap();
        let theirs = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        assert!(!ours.nodelay().unwrap() && !theirs.nodelay().unwrap());
        assert_eq!(set_for(&[peer]), 1);
        assert!(ours.nodelay().unwrap(), "the socket to the peer");
        assert!(
            !theirs.nodelay().unwrap(),
            "a socket to another address is left alone"
        );
    }
}
