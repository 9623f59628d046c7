//! The capped listener: at most [`MAX_CONNECTIONS`] admin connections, each
//! with a request-head deadline; when full, the oldest connection still
//! waiting for its head is closed to make room.

use super::*;

/// Marks a connection serving a request: not to be closed for room.
pub(super) const SERVING: u64 = u64::MAX;

/// One open admin connection as the listener sees it.
pub(super) struct Slot {
    /// Milliseconds after the registry's epoch at which the connection
    /// started waiting for a request head; [`SERVING`] while it serves one.
    waiting_since: AtomicU64,
    evicted: AtomicBool,
    /// The connection's task, woken to notice the eviction.
    waker: std::sync::Mutex<Option<Waker>>,
}

impl Slot {
    pub(super) fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub(super) fn park(&self, cx: &Context<'_>) {
        let mut w = self.waker.lock().unwrap_or_else(|e| e.into_inner());
        if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *w = Some(cx.waker().clone());
        }
    }
}

/// The open connections, at most [`MAX_CONNECTIONS`]: a fixed table the
/// listener consults to make room.
pub(super) struct ConnRegistry {
    epoch: tokio::time::Instant,
    slots: std::sync::Mutex<Vec<Option<Arc<Slot>>>>,
    freed: tokio::sync::Notify,
}

impl ConnRegistry {
    pub(super) fn new() -> ConnRegistry {
        ConnRegistry {
            epoch: tokio::time::Instant::now(),
            slots: std::sync::Mutex::new(vec![None; MAX_CONNECTIONS]),
            freed: tokio::sync::Notify::new(),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Takes a free slot for `slot`, or the one of the connection that has
    /// waited longest for a request head (closing it); false when every
    /// connection is serving a request.
    pub(super) fn claim(&self, slot: &Arc<Slot>) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(free) = slots.iter_mut().find(|s| s.is_none()) {
            *free = Some(slot.clone());
            return true;
        }
        let victim = slots
            .iter_mut()
            .filter(|s| {
                s.as_ref()
                    .is_some_and(|s| s.waiting_since.load(Ordering::Acquire) != SERVING)
            })
            .min_by_key(|s| {
                s.as_ref()
                    .map_or(SERVING, |s| s.waiting_since.load(Ordering::Acquire))
            });
        let Some(victim) = victim else {
            return false;
        };
        if let Some(old) = victim.replace(slot.clone()) {
            old.evict();
        }
        true
    }

    pub(super) fn release(&self, slot: &Arc<Slot>) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots
            .iter_mut()
            .find(|s| s.as_ref().is_some_and(|s| Arc::ptr_eq(s, slot)))
        {
            *s = None;
            self.freed.notify_one();
        }
    }
}

/// A listener that holds at most [`MAX_CONNECTIONS`] connections, making
/// room by closing the one that has waited longest for a request head.
pub(super) struct CappedListener {
    inner: TcpListener,
    registry: Arc<ConnRegistry>,
    trouble: AcceptTrouble,
}

impl CappedListener {
    /// Caps the connections of `inner`.
    pub(super) fn new(inner: TcpListener) -> CappedListener {
        CappedListener {
            inner,
            registry: Arc::new(ConnRegistry::new()),
            trouble: AcceptTrouble::new("admin API: "),
        }
    }

    /// axum's own accept loop logs nothing without its `tracing` feature
    /// and would log every failure with it: this one logs once an episode.
    pub(super) async fn accept_tcp(&mut self) -> (TcpStream, SocketAddr) {
        // A parked first try after a failure got a descriptor: accepting
        // works (see `proxy::serve_inspected`, which has the same loop).
        let mut retrying = false;
        loop {
            let accepted = tokio::select! {
                biased;
                accepted = self.inner.accept() => accepted,
                () = std::future::ready(()), if retrying => {
                    retrying = false;
                    self.trouble.accepted();
                    continue;
                }
                () = episode::sleep_until(self.trouble.ends_at()) => {
                    self.trouble.quiet_passed();
                    continue;
                }
            };
            retrying = false;
            match accepted {
                Ok(pair) => {
                    self.trouble.accepted();
                    return pair;
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    let pause = self.trouble.failed(&e);
                    tokio::time::sleep(pause).await;
                    retrying = true;
                }
            }
        }
    }
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CappedConn, SocketAddr) {
        let (io, addr) = self.accept_tcp().await;
        let slot = Arc::new(Slot {
            waiting_since: AtomicU64::new(self.registry.now_ms()),
            evicted: AtomicBool::new(false),
            waker: std::sync::Mutex::new(None),
        });
        loop {
            let freed = self.registry.freed.notified();
            if self.registry.claim(&slot) {
                break;
            }
            // Every connection is serving a request: wait for one to end.
            freed.await;
        }
        (CappedConn::new(io, slot, self.registry.clone()), addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Where a connection is in its request.
pub(super) enum Phase {
    /// Reading a request head into `head`, not yet given to hyper.
    Head,
    /// A complete, well-formed head (and what came after it) going to
    /// hyper from `head[from..]`.
    Release { from: usize },
    /// Serving the request: bytes pass straight through.
    Serving,
    /// Answering a bad head ourselves, then closing.
    Answer { bytes: Vec<u8>, written: usize },
    /// Answered: hyper reads the end of the stream.
    Done,
}

/// An admin connection. It holds its slot in the registry, keeps a request
/// head from hyper until the head is complete and well-formed (answering
/// malformed, oversized and late heads itself, with the JSON error body
/// every other error has), and fails once it has made no progress for
/// [`IDLE_TIMEOUT`] while serving or once the registry closes it.
pub(super) struct CappedConn {
    io: TcpStream,
    slot: Arc<Slot>,
    registry: Arc<ConnRegistry>,
    phase: Phase,
    head: Vec<u8>,
    /// Whether a response was written: the next head is not the first.
    answered: bool,
    idle: StdPin<Box<tokio::time::Sleep>>,
    head_deadline: StdPin<Box<tokio::time::Sleep>>,
}

impl CappedConn {
    pub(super) fn new(io: TcpStream, slot: Arc<Slot>, registry: Arc<ConnRegistry>) -> CappedConn {
        CappedConn {
            io,
            slot,
            registry,
            phase: Phase::Head,
            head: Vec::new(),
            answered: false,
            idle: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
            head_deadline: Box::pin(tokio::time::sleep(HEAD_TIMEOUT)),
        }
    }

    pub(super) fn progressed(&mut self) {
        self.idle
            .as_mut()
            .reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
    }

    pub(super) fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        self.idle.as_mut().poll(cx).is_ready()
    }

    /// What a write to the socket means for the connection: bytes out are
    /// progress; a write stuck past the idle timeout fails; otherwise the
    /// task parks where eviction can wake it.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.timed_out(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => {
                self.slot.park(cx);
                Poll::Pending
            }
        }
    }

    pub(super) fn evicted(&self) -> bool {
        self.slot.evicted.load(Ordering::Acquire)
    }

    /// A response starts: the next bytes are the next request's head.
    pub(super) fn responding(&mut self, bytes: &[u8]) {
        // A 100 Continue comes before the request body, not after it.
        if !matches!(self.phase, Phase::Serving) || bytes.starts_with(b"HTTP/1.1 1") {
            return;
        }
        self.answered = true;
        self.phase = Phase::Head;
        self.head.clear();
        self.slot
            .waiting_since
            .store(self.registry.now_ms(), Ordering::Release);
        self.head_deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + HEAD_TIMEOUT);
    }

    pub(super) fn answer(&mut self, status: StatusCode, message: &str) {
        // After a response the bytes may be the unread rest of a refused
        // body (413) rather than a head: answering them would append a
        // second response to the first. Closing is what hyper does there.
        if self.answered {
            self.phase = Phase::Done;
            return;
        }
        let body = json!({ "error": message }).to_string();
        let text = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        self.phase = Phase::Answer {
            bytes: text.into_bytes(),
            written: 0,
        };
    }

    /// Judges the head read so far after `new` more bytes arrived.
    pub(super) fn check_head(&mut self, new: usize) {
        // Only a new CRLFCRLF can complete a head: looking for it in the
        // new bytes (and the three before) keeps a head dribbled a byte at
        // a time linear, not quadratic.
        let from = self.head.len().saturating_sub(new + 3);
        let ended = self.head[from..].windows(4).any(|w| w == b"\r\n\r\n");
        if ended {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&self.head) {
                // A head that crossed the limit in the read that completed
                // it is as oversized as one still growing.
                Ok(httparse::Status::Complete(len)) if len > HEAD_LIMIT => {
                    return self.answer(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        &format!("the request head is larger than {HEAD_LIMIT} bytes"),
                    )
                }
                Ok(httparse::Status::Complete(_)) => match framing_error(&request) {
                    None => {
                        self.phase = Phase::Release { from: 0 };
                        self.slot.waiting_since.store(SERVING, Ordering::Release);
                        return;
                    }
                    Some(why) => return self.answer(StatusCode::BAD_REQUEST, why),
                },
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => {
                    return self.answer(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        &format!("more than {MAX_HEADERS} headers in the request head"),
                    )
                }
                Err(e) => {
                    return self.answer(
                        StatusCode::BAD_REQUEST,
                        &format!("malformed request head: {e}"),
                    )
                }
            }
        }
        if self.head.len() > HEAD_LIMIT {
            self.answer(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &format!("the request head is larger than {HEAD_LIMIT} bytes"),
            );
        }
    }

    pub(super) fn read_head(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut chunk = [0u8; 4096];
        let mut buf = ReadBuf::new(&mut chunk);
        match StdPin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len();
                if n == 0 {
                    // The end of the stream: hyper closes, as before.
                    self.phase = Phase::Done;
                    return Poll::Ready(Ok(()));
                }
                self.head.extend_from_slice(buf.filled());
                self.check_head(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.head_deadline.as_mut().poll(cx).is_ready() {
                    if self.head.is_empty() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "admin connection idle for too long",
                        )));
                    }
                    self.answer(
                        StatusCode::REQUEST_TIMEOUT,
                        &format!(
                            "the request head was not complete within {} s",
                            HEAD_TIMEOUT.as_secs()
                        ),
                    );
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
        }
    }
}

/// What hyper would refuse with an empty 400 in a head httparse accepts.
pub(super) fn framing_error(request: &httparse::Request<'_, '_>) -> Option<&'static str> {
    let mut length = None;
    for h in request.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            let Some(v) = v else {
                return Some("malformed request head: Content-Length is not a number");
            };
            if length.is_some_and(|l| l != v) {
                return Some("malformed request head: two different Content-Length headers");
            }
            length = Some(v);
        }
    }
    None
}

pub(super) fn evicted_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "admin connection closed to make room for a new one",
    )
}

pub(super) fn idle_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "admin connection idle for too long",
    )
}

impl Drop for CappedConn {
    fn drop(&mut self) {
        self.registry.release(&self.slot);
    }
}

impl AsyncRead for CappedConn {
    fn poll_read(
        mut self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.evicted() {
                return Poll::Ready(Err(evicted_error()));
            }
            match &mut this.phase {
                Phase::Head => match this.read_head(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        this.slot.park(cx);
                        return Poll::Pending;
                    }
                },
                Phase::Release { from } => {
                    let rest = &this.head[*from..];
                    let n = rest.len().min(buf.remaining());
                    buf.put_slice(&rest[..n]);
                    *from += n;
                    if *from == this.head.len() {
                        this.head = Vec::new();
                        this.phase = Phase::Serving;
                    }
                    this.progressed();
                    return Poll::Ready(Ok(()));
                }
                Phase::Serving => {
                    let before = buf.filled().len();
                    return match StdPin::new(&mut this.io).poll_read(cx, buf) {
                        Poll::Ready(r) => {
                            if buf.filled().len() > before {
                                this.progressed();
                            }
                            Poll::Ready(r)
                        }
                        Poll::Pending if this.timed_out(cx) => Poll::Ready(Err(idle_error())),
                        Poll::Pending => {
                            this.slot.park(cx);
                            Poll::Pending
                        }
                    };
                }
                Phase::Answer { bytes, written } => {
                    while *written < bytes.len() {
                        match StdPin::new(&mut this.io).poll_write(cx, &bytes[*written..]) {
                            Poll::Ready(Ok(0)) => {
                                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                            }
                            Poll::Ready(Ok(n)) => *written += n,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending if this.idle.as_mut().poll(cx).is_ready() => {
                                return Poll::Ready(Err(idle_error()))
                            }
                            Poll::Pending => {
                                this.slot.park(cx);
                                return Poll::Pending;
                            }
                        }
                    }
                    // Lingering reads of the rest of a bad head would let the
                    // peer hold the slot; the FIN tells it we are done.
                    return match StdPin::new(&mut this.io).poll_shutdown(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(_) => {
                            this.phase = Phase::Done;
                            Poll::Ready(Ok(()))
                        }
                    };
                }
                Phase::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for CappedConn {
    fn poll_write(
        mut self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.evicted() {
            return Poll::Ready(Err(evicted_error()));
        }
        self.responding(buf);
        let written = StdPin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(cx, written)
    }

    fn poll_write_vectored(
        mut self: StdPin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.evicted() {
            return Poll::Ready(Err(evicted_error()));
        }
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            self.responding(first);
        }
        let written = StdPin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        StdPin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        StdPin::new(&mut self.io).poll_shutdown(cx)
    }
}
