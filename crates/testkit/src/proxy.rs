//! A TCP proxy a test puts between a worker and Postgres, to fail that worker's path alone: cut
//! its connections and refuse new ones for a while (a database proxy restarting), or forward
//! nothing at all while the sockets stay open (a partition, or a middlebox that hangs: the
//! worker's sockets see no error, so only its own deadlines notice).

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    task::JoinHandle,
};

/// What the proxy does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards bytes both ways.
    Pass,
    /// Closes every connection and accepts none (they are closed as they come).
    Down,
    /// Keeps its connections and forwards nothing: bytes wait in the sockets' buffers.
    Stalled,
}

/// A proxy to `upstream` on a free local port; dropped, it stops listening.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("the proxy's address");
        let (mode, _) = watch::channel(Mode::Pass);
        let modes = mode.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mode = modes.subscribe();
                if *mode.borrow() == Mode::Down {
                    continue;
                }
                tokio::spawn(relay(client, upstream, mode));
            }
        });
        Self { addr, mode, accept }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.mode.send_replace(Mode::Down);
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Either direction ending closes both sockets.
    tokio::select! {
        () = pump(client_read, server_write, mode.clone()) => {}
        () = pump(server_read, client_write, mode) => {}
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Down => return,
            Mode::Stalled => {
                if mode.changed().await.is_err() {
                    return;
                }
            }
            Mode::Pass => {
                // A read is cancel-safe: nothing read is lost when the mode changes first.
                tokio::select! {
                    read = from.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => if to.write_all(&buf[..n]).await.is_err() {
                            return;
                        },
                    },
                    changed = mode.changed() => if changed.is_err() {
                        return;
                    },
                }
            }
        }
    }
}
