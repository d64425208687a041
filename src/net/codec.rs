//! The sync protocol's codec: length-prefixed byte frames (a 4-byte big-endian length,
//! then the body) with the cap checked before anything is allocated and the body read
//! in pieces, so what a peer announces costs nothing until its bytes arrive.

use super::NetMetrics;
use futures::{AsyncRead, AsyncWrite};
use libp2p::request_response;
use libp2p::StreamProtocol;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Length-prefixed byte frames with a size cap checked before allocating.
#[derive(Clone)]
pub(super) struct SyncCodec {
    pub(super) max: usize,
    pub(super) metrics: Arc<NetMetrics>,
}

/// How much of a frame is read (and so allocated) at a time: the buffer grows only as a
/// peer's bytes actually arrive, never to the length it announced.
const FRAME_READ_CHUNK: usize = 64 * 1024;

/// Reads one length-prefixed frame of at most `max` bytes. The announced length is
/// checked against the cap before anything is allocated, and the body is read in
/// chunks of [`FRAME_READ_CHUNK`], so a peer that announces 4 GiB and sends ten bytes
/// costs ten bytes (plus one chunk), not 4 GiB. A frame over the cap, or a body that
/// ends before its announced length, is an `InvalidData`/`UnexpectedEof` error.
#[doc(hidden)]
pub async fn read_frame<T: AsyncRead + Unpin>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    use futures::AsyncReadExt;
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("sync frame of {len} bytes exceeds the cap of {max}"),
        ));
    }
    let mut buf = Vec::with_capacity(len.min(FRAME_READ_CHUNK));
    let mut chunk = [0u8; 8 * 1024];
    while buf.len() < len {
        let want = (len - buf.len()).min(chunk.len());
        let n = io.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("sync frame ended after {} of its {len} bytes", buf.len()),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

impl SyncCodec {
    /// [`read_frame`], counting a frame refused for its size.
    async fn read<T: AsyncRead + Unpin + Send>(
        &self,
        proto: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let res = read_frame(io, self.max).await;
        if let (Ok(frame), true) = (&res, is_sync(proto)) {
            self.metrics
                .sync_bytes_in
                .fetch_add(frame.len() as u64 + 4, Ordering::Relaxed);
        }
        if matches!(&res, Err(e) if e.kind() == io::ErrorKind::InvalidData) {
            self.metrics
                .oversized_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        res
    }

    /// Counts a sync frame about to be written (length prefix included).
    fn sent(&self, proto: &StreamProtocol, frame: &[u8]) {
        if !is_sync(proto) {
            return;
        }
        self.metrics
            .sync_bytes_out
            .fetch_add(frame.len() as u64 + 4, Ordering::Relaxed);
    }
}

/// Sync frames are counted apart (the probe protocol shares the codec).
fn is_sync(proto: &StreamProtocol) -> bool {
    proto.as_ref() == super::SYNC_PROTOCOL
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, data: &[u8]) -> io::Result<()> {
    use futures::AsyncWriteExt;
    let len = u32::try_from(data.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(data).await?;
    io.close().await
}

impl request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, p: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read(p, io).await
    }

    async fn read_response<T>(&mut self, p: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read(p, io).await
    }

    async fn write_request<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.sent(p, &req);
        write_frame(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.sent(p, &res);
        write_frame(io, &res).await
    }
}
