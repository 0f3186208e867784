//! Transport: framed, size-limited, metered channels between the two parties.
//!
//! Protocol cores never touch sockets: they produce and consume typed
//! messages and a [`Channel`] moves them over TCP (tokio) or an in-memory
//! duplex (tests). Every frame is a little-endian `u32` length followed by
//! the payload; the payload of a protocol message starts with its envelope
//! tag ([`crate::msg`]: one tag space for session, OT, GC, HE and online
//! messages), then the family's own encoding ([`Wire`]). A length above the
//! channel's limit is refused before any allocation, and the receive buffer
//! grows only as bytes actually arrive, so a 4-byte header cannot make the
//! receiver allocate more than the peer sends. Every receive has a timeout
//! ([`Channel::with_timeout`]). Bytes, messages and rounds are counted per
//! phase and per layer.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};

/// Default largest frame a channel accepts (256 MiB).
pub const DEFAULT_MAX_FRAME: usize = 256 << 20;
/// Default time a receive waits for the peer (10 minutes: longer than any
/// single step of the largest offline phase on a slow machine).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Receive buffers grow by at most this much before the bytes are there.
const READ_CHUNK: usize = 1 << 20;
/// Largest receive buffer a channel keeps for the next frame of at least
/// [`READ_CHUNK`] bytes (larger ones are freed after use): frames of garbled
/// tables (≈ 7 MB) and ciphertexts then land in memory that is already
/// mapped, instead of fresh pages that the kernel must fault in and clear
/// for every frame.
const KEEP_RX: usize = 64 << 20;

/// Transport and framing errors.
#[derive(Debug, Error)]
pub enum NetError {
    /// The socket failed.
    #[error("i/o error while {context}: {source}")]
    Io {
        /// What the channel was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The peer closed the connection.
    #[error("peer closed the connection while {context}")]
    Closed {
        /// What the channel was doing.
        context: String,
    },
    /// A frame exceeds the channel's limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes while {context}")]
    FrameTooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: usize,
        /// What the channel was doing.
        context: String,
    },
    /// A message did not decode.
    #[error("malformed {message} message: {source}")]
    Malformed {
        /// Which message was expected.
        message: &'static str,
        /// What was wrong.
        #[source]
        source: WireError,
    },
    /// A message of another family arrived (by its envelope tag).
    #[error("expected a {expected} message, got a {got} message")]
    UnexpectedMessage {
        /// The family that was expected.
        expected: &'static str,
        /// The family that arrived.
        got: String,
    },
    /// The peer sent an abort message explaining why it ends the session.
    #[error("the peer aborted: {reason}")]
    PeerAborted {
        /// The peer's reason.
        reason: String,
    },
    /// The peer sent nothing for longer than the channel's timeout.
    #[error("peer sent nothing for {seconds:.0} s while {context} (timeout)")]
    Timeout {
        /// The timeout.
        seconds: f64,
        /// What the channel was doing.
        context: String,
    },
}

/// A message that failed to decode: what was wrong and at which byte offset.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{what} at byte offset {offset}")]
pub struct WireError {
    /// What was wrong.
    pub what: String,
    /// Byte offset in the payload.
    pub offset: usize,
}

/// A typed protocol message: encodes to bytes and decodes without panicking.
pub trait Wire: Sized {
    /// Name used in error messages.
    const NAME: &'static str;
    /// Envelope tag of the message family ([`crate::msg`]); `None` for raw frames.
    const TAG: Option<u8> = None;
    /// Appends the encoding (without the envelope tag) to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Decodes a whole payload (without the envelope tag).
    fn decode(bytes: &[u8]) -> Result<Self, WireError>;
}

/// Raw bytes are a message too.
impl Wire for Vec<u8> {
    const NAME: &'static str = "raw";
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        Ok(bytes.to_vec())
    }
}

/// Cursor for decoding payloads; every read is bounds-checked and reports its offset.
#[derive(Debug)]
pub struct WireReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> WireReader<'a> {
    /// Starts reading at offset 0.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Current offset.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// An error at the current offset.
    pub fn error(&self, what: impl Into<String>) -> WireError {
        WireError {
            what: what.into(),
            offset: self.pos,
        }
    }

    /// Reads `n` bytes.
    pub fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return Err(self.error(format!(
                "truncated {what}: need {n} bytes, {} left",
                self.remaining()
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Reads one byte.
    pub fn u8(&mut self, what: &str) -> Result<u8, WireError> {
        Ok(self.bytes(1, what)?[0])
    }

    /// Reads a little-endian `u32`.
    pub fn u32(&mut self, what: &str) -> Result<u32, WireError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a little-endian `u64`.
    pub fn u64(&mut self, what: &str) -> Result<u64, WireError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// Reads a `u32` length and checks it against what is left (`elem` bytes per item),
    /// so a peer cannot make us allocate more than it sent.
    pub fn len_prefix(&mut self, elem: usize, what: &str) -> Result<usize, WireError> {
        let n = self.u32(what)? as usize;
        let need = n.checked_mul(elem.max(1));
        match need {
            Some(need) if need <= self.remaining() => Ok(n),
            _ => Err(self.error(format!(
                "{what}: length {n} × {elem} bytes exceeds the {} bytes left",
                self.remaining()
            ))),
        }
    }

    /// Fails unless the payload is fully consumed.
    pub fn finish(&self, what: &str) -> Result<(), WireError> {
        if self.remaining() != 0 {
            return Err(self.error(format!("{} trailing bytes after {what}", self.remaining())));
        }
        Ok(())
    }
}

/// Traffic of one phase, as seen by one party.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PhaseTraffic {
    /// Payload plus framing bytes sent.
    pub bytes_sent: u64,
    /// Payload plus framing bytes received.
    pub bytes_received: u64,
    /// Frames sent.
    pub messages_sent: u64,
    /// Frames received.
    pub messages_received: u64,
    /// Direction changes from receiving to sending (one per round trip).
    pub rounds: u64,
}

/// Per-phase (and per-layer) byte, message and round counters.
#[derive(Debug, Clone, Default)]
pub struct Meter {
    phase: String,
    layer: Option<String>,
    phases: BTreeMap<String, PhaseTraffic>,
    layers: BTreeMap<(String, String), PhaseTraffic>,
    last_was_receive: bool,
}

impl Meter {
    /// Phase that new traffic is attributed to.
    pub fn set_phase(&mut self, phase: impl Into<String>) {
        self.phase = phase.into();
    }

    /// Layer (node name) that new traffic is also attributed to; `None` for none.
    pub fn set_layer(&mut self, layer: Option<String>) {
        self.layer = layer;
    }

    /// Traffic per `(layer, phase)`.
    pub fn layers(&self) -> &BTreeMap<(String, String), PhaseTraffic> {
        &self.layers
    }

    /// The current phase.
    pub fn phase(&self) -> &str {
        &self.phase
    }

    /// The current layer (node name), if any.
    pub fn layer(&self) -> Option<&str> {
        self.layer.as_deref()
    }

    fn update(&mut self, f: impl Fn(&mut PhaseTraffic)) {
        f(self.phases.entry(self.phase.clone()).or_default());
        if let Some(layer) = &self.layer {
            f(self
                .layers
                .entry((layer.clone(), self.phase.clone()))
                .or_default());
        }
    }

    fn on_send(&mut self, bytes: u64) {
        let round = self.last_was_receive;
        self.last_was_receive = false;
        self.update(|e| {
            e.bytes_sent += bytes;
            e.messages_sent += 1;
            if round {
                e.rounds += 1;
            }
        });
    }

    fn on_receive(&mut self, bytes: u64) {
        self.last_was_receive = true;
        self.update(|e| {
            e.bytes_received += bytes;
            e.messages_received += 1;
        });
    }

    /// Traffic of every phase seen so far.
    pub fn phases(&self) -> &BTreeMap<String, PhaseTraffic> {
        &self.phases
    }

    /// Traffic of one phase (zero if none).
    pub fn get(&self, phase: &str) -> PhaseTraffic {
        self.phases.get(phase).copied().unwrap_or_default()
    }

    /// Sum over the phases whose name starts with `prefix` (`""` for all).
    pub fn total(&self, prefix: &str) -> PhaseTraffic {
        let mut t = PhaseTraffic::default();
        for (k, v) in &self.phases {
            if k.starts_with(prefix) {
                t.bytes_sent += v.bytes_sent;
                t.bytes_received += v.bytes_received;
                t.messages_sent += v.messages_sent;
                t.messages_received += v.messages_received;
                t.rounds += v.rounds;
            }
        }
        t
    }
}

type BoxRead = Box<dyn AsyncRead + Unpin + Send>;
type BoxWrite = Box<dyn AsyncWrite + Unpin + Send>;

/// A framed, metered, size-limited connection to the other party.
pub struct Channel {
    reader: BufReader<BoxRead>,
    writer: BufWriter<BoxWrite>,
    meter: Meter,
    max_frame: usize,
    timeout: Duration,
    scratch: Vec<u8>,
    /// The receive buffer for frames of at least [`READ_CHUNK`] bytes, reused from frame to frame (up to [`KEEP_RX`]).
    rx: Vec<u8>,
    dirty: bool,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("phase", &self.meter.phase)
            .field("max_frame", &self.max_frame)
            .finish()
    }
}

impl Channel {
    /// Wraps a reader and a writer.
    pub fn new(
        reader: impl AsyncRead + Unpin + Send + 'static,
        writer: impl AsyncWrite + Unpin + Send + 'static,
    ) -> Self {
        Self {
            reader: BufReader::with_capacity(1 << 16, Box::new(reader)),
            writer: BufWriter::with_capacity(1 << 16, Box::new(writer)),
            meter: Meter::default(),
            max_frame: DEFAULT_MAX_FRAME,
            timeout: DEFAULT_TIMEOUT,
            scratch: Vec::new(),
            rx: Vec::new(),
            dirty: false,
        }
    }

    /// Sets how long a receive (and a flush) waits for the peer.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Changes the receive timeout of an open channel.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The receive timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets the largest frame this side accepts.
    pub fn with_max_frame(mut self, max_frame: usize) -> Self {
        self.max_frame = max_frame;
        self
    }

    /// The largest frame this side accepts.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Attributes subsequent traffic to `phase` (e.g. `"offline/gc"`).
    pub fn set_phase(&mut self, phase: impl Into<String>) {
        self.meter.set_phase(phase);
    }

    /// Also attributes subsequent traffic to `layer` (a node name), or to none.
    pub fn set_layer(&mut self, layer: Option<String>) {
        self.meter.set_layer(layer);
    }

    /// The traffic counters.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// Sends a typed message (buffered; flushed before the next receive or by [`Channel::flush`]).
    pub async fn send<M: Wire>(&mut self, msg: &M) -> Result<(), NetError> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        if let Some(tag) = M::TAG {
            buf.push(tag);
        }
        msg.encode(&mut buf);
        let res = self.send_bytes(&buf, M::NAME).await;
        self.scratch = buf;
        res
    }

    /// Sends one frame made of `parts` back to back, without first copying
    /// them into one buffer (large parts go straight to the transport). The
    /// peer sees exactly the frame of their concatenation; for a typed
    /// message the first part carries the envelope tag.
    pub async fn send_parts(&mut self, parts: &[&[u8]], what: &str) -> Result<(), NetError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > u32::MAX as usize {
            return Err(NetError::FrameTooLarge {
                len: len as u64,
                max: u32::MAX as usize,
                context: format!("sending {what}"),
            });
        }
        let mut res = self.writer.write_all(&(len as u32).to_le_bytes()).await;
        for part in parts {
            if res.is_err() {
                break;
            }
            res = self.writer.write_all(part).await;
        }
        if let Err(e) = res {
            return Err(self.failed_send(io_err(e, format!("sending {what}"))).await);
        }
        self.dirty = true;
        self.meter.on_send(len as u64 + 4);
        Ok(())
    }

    /// Sends one raw frame.
    pub async fn send_bytes(&mut self, payload: &[u8], what: &str) -> Result<(), NetError> {
        self.send_parts(&[payload], what).await
    }

    /// Flushes buffered frames to the peer (bounded by the timeout: a peer
    /// that stops reading cannot hold us forever).
    pub async fn flush(&mut self) -> Result<(), NetError> {
        if self.dirty {
            let timeout = self.timeout;
            match tokio::time::timeout(timeout, self.writer.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(self.failed_send(io_err(e, "flushing".into())).await),
                Err(_) => {
                    return Err(NetError::Timeout {
                        seconds: timeout.as_secs_f64(),
                        context: "flushing (the peer stopped reading)".into(),
                    })
                }
            }
            self.dirty = false;
        }
        Ok(())
    }

    /// Flushes and shuts the sending side down (the peer reads end of
    /// stream after the last frame). Bytes still in an emulated link's delay
    /// line are delivered first.
    pub async fn shutdown(&mut self) -> Result<(), NetError> {
        self.flush().await?;
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.writer.shutdown()).await {
            Ok(r) => r.map_err(|e| io_err(e, "shutting down".into())),
            Err(_) => Err(NetError::Timeout {
                seconds: timeout.as_secs_f64(),
                context: "shutting down (the peer stopped reading)".into(),
            }),
        }
    }

    /// Receives a typed message: checks the envelope tag, then decodes.
    pub async fn recv<M: Wire>(&mut self) -> Result<M, NetError> {
        self.flush().await?;
        let buf = self.read_frame_with(M::NAME, true).await?;
        self.meter.on_receive(buf.len() as u64 + 4);
        let res = Self::decode_frame::<M>(&buf);
        if buf.len() >= READ_CHUNK && buf.capacity() <= KEEP_RX {
            self.rx = buf;
        }
        res
    }

    /// Decodes a received frame as `M` (its envelope tag first).
    fn decode_frame<M: Wire>(bytes: &[u8]) -> Result<M, NetError> {
        let body = match M::TAG {
            None => bytes,
            Some(tag) => match bytes.first() {
                Some(&t) if t == tag => &bytes[1..],
                Some(&t) => {
                    // A peer that gives up says why: surface its reason.
                    if t == crate::msg::TAG_SESSION {
                        if let Ok(crate::inference::SessionMessage::Abort { reason }) =
                            crate::inference::SessionMessage::decode(&bytes[1..])
                        {
                            return Err(NetError::PeerAborted { reason });
                        }
                    }
                    return Err(NetError::UnexpectedMessage {
                        expected: M::NAME,
                        got: crate::msg::tag_name(t),
                    });
                }
                None => {
                    return Err(NetError::Malformed {
                        message: M::NAME,
                        source: WireError {
                            what: "empty frame (no envelope tag)".into(),
                            offset: 0,
                        },
                    })
                }
            },
        };
        let skip = usize::from(M::TAG.is_some());
        M::decode(body).map_err(|mut source| {
            source.offset += skip;
            NetError::Malformed {
                message: M::NAME,
                source,
            }
        })
    }

    /// A send that failed because the peer is gone: a peer that gave up
    /// usually said why before it closed, so its abort may be waiting among
    /// the frames already received. Returns [`NetError::PeerAborted`] with
    /// its reason if so (reading at most 64 frames, for at most a second
    /// each), else `err`.
    async fn failed_send(&mut self, err: NetError) -> NetError {
        if !matches!(err, NetError::Io { .. } | NetError::Closed { .. }) {
            return err;
        }
        let wait = self.timeout.min(Duration::from_secs(1));
        for _ in 0..64 {
            let frame = match tokio::time::timeout(wait, self.read_frame("a pending abort")).await {
                Ok(Ok(f)) => f,
                _ => break,
            };
            if frame.first() == Some(&crate::msg::TAG_SESSION) {
                if let Ok(crate::inference::SessionMessage::Abort { reason }) =
                    crate::inference::SessionMessage::decode(&frame[1..])
                {
                    return NetError::PeerAborted { reason };
                }
            }
        }
        err
    }

    /// Receives one raw frame (flushing pending sends first, so two parties
    /// never wait on each other). Each wait for bytes is bounded by the
    /// timeout; the buffer grows as the payload arrives.
    pub async fn recv_bytes(&mut self, what: &str) -> Result<Vec<u8>, NetError> {
        self.flush().await?;
        let buf = self.read_frame(what).await?;
        self.meter.on_receive(buf.len() as u64 + 4);
        Ok(buf)
    }

    /// Reads one frame into a new buffer (no flush, no metering).
    async fn read_frame(&mut self, what: &str) -> Result<Vec<u8>, NetError> {
        self.read_frame_with(what, false).await
    }

    /// Reads one frame (no flush, no metering). With `reuse`, a frame of at
    /// least [`READ_CHUNK`] bytes is read into the channel's kept receive
    /// buffer (the caller hands it back); smaller frames get a buffer of
    /// their own, as before the reuse (which is for the garbled tables' 7 MB
    /// frames: the OT's sub-megabyte frames measured no faster with it).
    async fn read_frame_with(&mut self, what: &str, reuse: bool) -> Result<Vec<u8>, NetError> {
        let timeout = self.timeout;
        let ctx = || format!("receiving {what}");
        let mut len = [0u8; 4];
        match tokio::time::timeout(timeout, self.reader.read_exact(&mut len)).await {
            Ok(r) => r.map_err(|e| io_err(e, ctx()))?,
            Err(_) => {
                return Err(NetError::Timeout {
                    seconds: timeout.as_secs_f64(),
                    context: ctx(),
                })
            }
        };
        let len = u32::from_le_bytes(len) as usize;
        if len > self.max_frame {
            return Err(NetError::FrameTooLarge {
                len: len as u64,
                max: self.max_frame,
                context: ctx(),
            });
        }
        // The buffer grows only as the payload arrives (one read chunk, then
        // doubling once full: never more than twice the bytes received);
        // bytes are read straight into the spare capacity (no zeroing). A
        // reused buffer whose capacity already holds the frame does not grow.
        let mut buf = if reuse && len >= READ_CHUNK {
            let mut b = std::mem::take(&mut self.rx);
            b.clear();
            b
        } else {
            Vec::new()
        };
        buf.reserve(len.min(READ_CHUNK));
        while buf.len() < len {
            if buf.len() == buf.capacity() {
                buf.reserve((len - buf.len()).min(READ_CHUNK));
            }
            let read = tokio::time::timeout(
                timeout,
                (&mut self.reader)
                    .take((len - buf.len()) as u64)
                    .read_buf(&mut buf),
            )
            .await;
            match read {
                Ok(Ok(0)) => {
                    return Err(NetError::Closed {
                        context: format!(
                            "{} (frame cut after {} of {len} bytes)",
                            ctx(),
                            buf.len()
                        ),
                    })
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(io_err(e, ctx())),
                Err(_) => {
                    return Err(NetError::Timeout {
                        seconds: timeout.as_secs_f64(),
                        context: format!("{} ({} of {len} bytes arrived)", ctx(), buf.len()),
                    })
                }
            }
        }
        Ok(buf)
    }
}

fn io_err(source: std::io::Error, context: String) -> NetError {
    use std::io::ErrorKind as K;
    match source.kind() {
        // The peer is gone, whichever way the socket tells it.
        K::UnexpectedEof | K::BrokenPipe | K::ConnectionReset | K::ConnectionAborted => {
            NetError::Closed { context }
        }
        _ => NetError::Io { context, source },
    }
}

/// Two connected in-memory channels (for tests and single-process runs).
pub fn duplex_pair() -> (Channel, Channel) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    (Channel::new(ar, aw), Channel::new(br, bw))
}

fn from_tcp(stream: TcpStream) -> Result<Channel, NetError> {
    stream
        .set_nodelay(true)
        .map_err(|e| io_err(e, "setting TCP_NODELAY".into()))?;
    let (r, w) = stream.into_split();
    Ok(Channel::new(r, w))
}

/// Connects to a listening party.
pub async fn tcp_connect(addr: impl ToSocketAddrs + fmt::Display) -> Result<Channel, NetError> {
    let ctx = format!("connecting to {addr}");
    let stream = TcpStream::connect(&addr)
        .await
        .map_err(|e| io_err(e, ctx))?;
    from_tcp(stream)
}

/// Accepts one connection on a listener.
pub async fn tcp_accept(listener: &TcpListener) -> Result<Channel, NetError> {
    let (stream, _) = listener
        .accept()
        .await
        .map_err(|e| io_err(e, "accepting a connection".into()))?;
    from_tcp(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Ping(u64);

    impl Wire for Ping {
        const NAME: &'static str = "ping";
        fn encode(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.0.to_le_bytes());
        }
        fn decode(bytes: &[u8]) -> Result<Self, WireError> {
            let mut r = WireReader::new(bytes);
            let v = r.u64("value")?;
            r.finish("ping")?;
            Ok(Ping(v))
        }
    }

    #[tokio::test]
    async fn duplex_round_trip_and_meter() {
        let (mut a, mut b) = duplex_pair();
        a.set_phase("online");
        b.set_phase("online");
        a.send(&Ping(7)).await.unwrap();
        a.flush().await.unwrap();
        assert_eq!(b.recv::<Ping>().await.unwrap(), Ping(7));
        b.send(&Ping(8)).await.unwrap();
        b.flush().await.unwrap();
        assert_eq!(a.recv::<Ping>().await.unwrap(), Ping(8));
        assert_eq!(a.meter().get("online").bytes_sent, 12);
        assert_eq!(a.meter().get("online").bytes_received, 12);
        assert_eq!(b.meter().get("online").rounds, 1);
    }

    /// A message of any length (the reused receive buffer must hold each
    /// frame exactly, whatever the sizes before it).
    #[derive(Debug, PartialEq)]
    struct Blob(Vec<u8>);

    impl Wire for Blob {
        const NAME: &'static str = "blob";
        fn encode(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.0);
        }
        fn decode(bytes: &[u8]) -> Result<Self, WireError> {
            Ok(Blob(bytes.to_vec()))
        }
    }

    #[tokio::test]
    async fn frames_of_any_size_follow_each_other_through_the_reused_buffer() {
        let (mut a, mut b) = duplex_pair();
        let sizes = [3 << 20, 10, 0, 2 << 20, 1, (3 << 20) + 5, KEEP_RX + 1, 7];
        let blobs: Vec<Blob> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Blob((0..n).map(|k| (k * 31 + i) as u8).collect()))
            .collect();
        let sent: Vec<Blob> = blobs.iter().map(|b| Blob(b.0.clone())).collect();
        let writer = tokio::spawn(async move {
            for blob in &sent {
                a.send(blob).await.unwrap();
            }
            a.flush().await.unwrap();
            a
        });
        for (i, blob) in blobs.iter().enumerate() {
            let got: Blob = b.recv().await.unwrap();
            assert_eq!(got.0.len(), blob.0.len(), "frame {i}");
            assert!(got == *blob, "frame {i}: contents differ");
            // Kept for the next frame only up to KEEP_RX.
            assert!(b.rx.capacity() <= KEEP_RX, "frame {i}");
        }
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn oversized_and_truncated_frames_are_errors() {
        let (mut a, b) = duplex_pair();
        let mut b = b.with_max_frame(16);
        a.send_bytes(&[0u8; 32], "blob").await.unwrap();
        a.flush().await.unwrap();
        assert!(matches!(
            b.recv_bytes("blob").await,
            Err(NetError::FrameTooLarge { len: 32, .. })
        ));
        let (mut a, mut b) = duplex_pair();
        a.send_bytes(&[1, 2, 3], "short").await.unwrap();
        a.flush().await.unwrap();
        assert!(matches!(
            b.recv::<Ping>().await,
            Err(NetError::Malformed {
                message: "ping",
                ..
            })
        ));
        drop(a);
        assert!(matches!(
            b.recv_bytes("x").await,
            Err(NetError::Closed { .. })
        ));
    }

    #[test]
    fn length_prefix_cannot_over_allocate() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut r = WireReader::new(&payload);
        let err = r.len_prefix(16, "labels").unwrap_err();
        assert_eq!(err.offset, 4);
    }
}
