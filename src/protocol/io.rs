//! Socket reads and writes with as few syscalls and wakeups as the protocol allows.
//!
//! A read that returns fewer bytes than the buffer had room for proves the socket was
//! drained at that instant, so the readiness flag is cleared right there instead of
//! spending a second `recv` that would only return `EAGAIN`. New data arriving after the
//! read raises a fresh edge in the reactor, so nothing is missed.

use std::io;
use std::mem::MaybeUninit;

use bytes::BytesMut;
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Smallest free space offered to a read.
const MIN_READ: usize = 8 * 1024;

/// Reads once into the spare capacity of `buf`. Returns 0 on end of stream.
///
/// # Cancellation safety
/// Cancel safe: bytes are only appended to `buf` by a completed `recv`.
pub async fn read_some(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < MIN_READ {
        buf.reserve(MIN_READ);
    }
    loop {
        // The single-slot readiness API: no waiter list to join and leave on every
        // wait. Each socket is only ever read by the one task that owns it.
        std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await?;
        if let Some(n) = try_read_some(stream, buf)? {
            return Ok(n);
        }
    }
}

/// One non-blocking read. `Ok(None)` when nothing was available.
pub fn try_read_some(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<Option<usize>> {
    if buf.capacity() - buf.len() < MIN_READ {
        buf.reserve(MIN_READ);
    }
    let spare = buf.spare_capacity_mut();
    let room = spare.len();
    let mut got: Option<usize> = None;
    let res = stream.try_io(Interest::READABLE, || {
        let n = recv(stream, spare)?;
        got = Some(n);
        if n < room {
            // Drained: report WouldBlock so tokio clears readiness; the bytes are kept.
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match (res, got) {
        (_, Some(n)) => {
            // SAFETY: recv initialized exactly `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
            Ok(Some(n))
        }
        (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        (Err(e), None) => Err(e),
        (Ok(_), None) => Ok(None),
    }
}

fn recv(stream: &TcpStream, spare: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    SockRef::from(stream).recv(spare)
}

/// Writes all of `data`, trying the socket first and waiting for writability only when
/// the kernel buffer is full.
pub async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match stream.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes two buffers, with one `writev` in the common case.
pub async fn write_all2(stream: &TcpStream, a: &[u8], b: &[u8]) -> io::Result<()> {
    if a.is_empty() {
        return write_all(stream, b).await;
    }
    if b.is_empty() {
        return write_all(stream, a).await;
    }
    let total = a.len() + b.len();
    let n = loop {
        match stream.try_write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)]) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    };
    if n >= total {
        return Ok(());
    }
    if n < a.len() {
        write_all(stream, &a[n..]).await?;
        write_all(stream, b).await
    } else {
        write_all(stream, &b[n - a.len()..]).await
    }
}
