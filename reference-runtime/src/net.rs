//! Async TCP over non-blocking sockets registered with the netpoller.

use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::netpoll::{Interest, PollDesc};
use crate::sched::{self, Shared};

/// An fd's registration with the netpoller of the runtime it was created in.
struct Registration {
    shared: Arc<Shared>,
    pd: Arc<PollDesc>,
}

impl Registration {
    fn new(fd: RawFd) -> io::Result<Self> {
        let shared = sched::current().map(|c| c.shared.clone()).ok_or_else(|| {
            io::Error::other("reference-runtime sockets must be created inside a reference-runtime task")
        })?;
        let pd = shared.netpoll.register(fd)?;
        Ok(Self { shared, pd })
    }

    fn poll_ready(&self, cx: &mut Context<'_>, interest: Interest) -> Poll<()> {
        self.shared.netpoll.poll_ready(self.shared.log.as_deref(), &self.pd, interest, cx)
    }

    /// Runs a non-blocking syscall until it does not say EAGAIN; on EAGAIN the task waits for
    /// the fd's next edge in the netpoller.
    fn poll_io<R>(
        &self,
        cx: &mut Context<'_>,
        interest: Interest,
        mut op: impl FnMut() -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        loop {
            match op() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.poll_ready(cx, interest).is_pending() {
                        return Poll::Pending;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return Poll::Ready(r),
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.netpoll.deregister(&self.pd);
    }
}

/// A listening TCP socket.
pub struct TcpListener {
    // Declared first: deregistered before the socket closes.
    reg: Registration,
    inner: std::net::TcpListener,
}

impl TcpListener {
    /// Binds and listens. Must be called inside a runtime task.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<Self> {
        let inner = std::net::TcpListener::bind(addr)?;
        inner.set_nonblocking(true)?;
        let reg = Registration::new(inner.as_raw_fd())?;
        Ok(Self { reg, inner })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Accepts a connection, parking the task in the netpoller until one arrives.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) =
            poll_fn(|cx| self.reg.poll_io(cx, Interest::Read, || self.inner.accept())).await?;
        Ok((TcpStream::from_std(stream)?, peer))
    }
}

impl std::fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpListener").field("fd", &self.inner.as_raw_fd()).finish()
    }
}

/// A connected TCP socket.
pub struct TcpStream {
    // Declared first: deregistered before the socket closes.
    reg: Registration,
    inner: std::net::TcpStream,
}

impl TcpStream {
    fn from_std(inner: std::net::TcpStream) -> io::Result<Self> {
        inner.set_nonblocking(true)?;
        let reg = Registration::new(inner.as_raw_fd())?;
        Ok(Self { reg, inner })
    }

    /// Connects without blocking the M: the task parks in the netpoller until the connection
    /// completes (write readiness).
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let inner = std::net::TcpStream::from(nonblocking_socket(&addr)?);
        match raw_connect(inner.as_raw_fd(), &addr) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINPROGRESS | libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
        // Registered after connect(2): a fresh socket reports EPOLLOUT|EPOLLHUP before it is
        // connected, which must not count as completion.
        let reg = Registration::new(inner.as_raw_fd())?;
        let stream = TcpStream { reg, inner };
        loop {
            if let Some(e) = stream.inner.take_error()? {
                return Err(e);
            }
            match stream.inner.peer_addr() {
                Ok(_) => return Ok(stream),
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {}
                Err(e) => return Err(e),
            }
            poll_fn(|cx| stream.reg.poll_ready(cx, Interest::Write)).await;
        }
    }

    /// Reads some bytes (0 at end of stream).
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Self { reg, inner } = self;
        poll_fn(|cx| reg.poll_io(cx, Interest::Read, || (&*inner).read(buf))).await
    }

    /// Reads exactly `buf.len()` bytes.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.read(&mut buf[done..]).await? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => done += n,
            }
        }
        Ok(())
    }

    /// Writes some bytes.
    pub async fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Self { reg, inner } = self;
        poll_fn(|cx| reg.poll_io(cx, Interest::Write, || (&*inner).write(buf))).await
    }

    /// Writes all of `buf`.
    pub async fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write(buf).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => buf = &buf[n..],
            }
        }
        Ok(())
    }

    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.inner.set_nodelay(nodelay)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    /// Shuts down the writing half (the peer reads end of stream).
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.inner.shutdown(std::net::Shutdown::Write)
    }
}

impl std::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStream").field("fd", &self.inner.as_raw_fd()).finish()
    }
}

fn nonblocking_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: socket(2) takes no pointers; on success the fd is new and owned by nothing else,
    // so OwnedFd may take it.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn raw_connect(fd: RawFd, addr: &SocketAddr) -> io::Result<()> {
    let r = match addr {
        SocketAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: `sa` is a valid sockaddr_in and the length passed is its size.
            unsafe {
                libc::connect(
                    fd,
                    (&raw const sa).cast::<libc::sockaddr>(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: `sa` is a valid sockaddr_in6 and the length passed is its size.
            unsafe {
                libc::connect(
                    fd,
                    (&raw const sa).cast::<libc::sockaddr>(),
                    size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
