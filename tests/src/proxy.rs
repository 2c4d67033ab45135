//! A TCP proxy that can be told to stop forwarding: a network partition between a worker and
//! PostgreSQL, without closing anything. While cut, every byte in either direction is held (the
//! sockets stay open, so the server still sees the sessions as alive and the client's queries
//! hang, as behind a broken router); new connections are accepted and wait. `heal` lets the held
//! bytes through.
//!
//! Written by hand (a hundred lines of tokio) because no crate offers a partition switch; the
//! test harness needs nothing more.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How often a held copy loop looks at the switch again.
const HOLD_POLL: Duration = Duration::from_millis(10);

pub struct Proxy {
    addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, _) = watch::channel(false);
        let cut = Arc::new(cut);
        let switch = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let rx = switch.subscribe();
                tokio::spawn(async move {
                    wait_healed(rx.clone()).await;
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = tokio::spawn(pump(cr, sw, rx.clone()));
                    let down = tokio::spawn(pump(sr, cw, rx));
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Ok(Proxy { addr, cut, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop forwarding (bytes are held, connections stay open).
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forward again, held bytes first.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn wait_healed(mut rx: watch::Receiver<bool>) {
    while *rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Copies `from` to `to`, holding what it read while the switch says cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rx: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // while cut, do not even read: the sender's socket buffers fill up as on a dead link
        while *rx.borrow() {
            tokio::time::sleep(HOLD_POLL).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while *rx.borrow() {
            tokio::time::sleep(HOLD_POLL).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
