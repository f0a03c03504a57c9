//! `netpoll`: a loopback TCP echo server (an acceptor task and a handler task per connection)
//! and client tasks in the same runtime doing request/response round trips. Every request parks
//! a handler and every response parks a client in the netpoller; the Ms run out of work between
//! them and one of them blocks in `epoll_wait`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Config, Measured, Stop, stopped, timed};
use crate::{TcpListener, TcpStream, spawn};

const MESSAGE: usize = 64;

pub(super) async fn main(cfg: Config) -> io::Result<Measured> {
    timed(cfg, move |stop| echo(cfg.scaled(8), stop)).await
}

/// Runs an echo server and `clients` clients until `stop`; returns the round trips.
pub(super) async fn echo(clients: usize, stop: Stop) -> io::Result<u64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let accepting = Arc::new(AtomicBool::new(true));
    let server = spawn(serve(listener, accepting.clone()));
    let handles: Vec<_> = (0..clients).map(|_| spawn(client(addr, stop.clone()))).collect();
    let mut trips = 0;
    let mut failed = None;
    for h in handles {
        match h.await {
            Ok(n) => trips += n,
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    // One more connection wakes the acceptor, which then sees it should stop.
    accepting.store(false, Ordering::Relaxed);
    drop(TcpStream::connect(addr).await?);
    server.await?;
    match failed {
        Some(e) => Err(e),
        None => Ok(trips),
    }
}

async fn serve(listener: TcpListener, accepting: Arc<AtomicBool>) -> io::Result<()> {
    let mut handlers = Vec::new();
    loop {
        let (stream, _) = listener.accept().await?;
        if !accepting.load(Ordering::Relaxed) {
            break;
        }
        stream.set_nodelay(true)?;
        handlers.push(spawn(handle(stream)));
    }
    for h in handlers {
        h.await?;
    }
    Ok(())
}

async fn handle(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 4 * MESSAGE];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}

async fn client(addr: SocketAddr, stop: Stop) -> io::Result<u64> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = [b'x'; MESSAGE];
    let mut response = [0u8; MESSAGE];
    let mut trips = 0;
    loop {
        stream.write_all(&request).await?;
        stream.read_exact(&mut response).await?;
        trips += 1;
        if stopped(&stop) {
            break;
        }
    }
    Ok(trips)
}
