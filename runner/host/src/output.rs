//! The captured stdout and stderr of a component granted `stdio`: the first `capacity`
//! bytes of a call's output are kept (floe logs them after the call), the rest is
//! counted and dropped. A write never fails, so a component that prints too much is
//! cut, never trapped (wasmtime-wasi's own memory pipe fails writes beyond its
//! capacity, which traps a guest whose runtime treats that as fatal).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// How much a guest may hand over in one write (it asks before each write).
const WRITE_PERMIT: usize = 64 * 1024;

/// One call's captured output stream (clones share it).
#[derive(Clone)]
pub(crate) struct CappedOutput {
    capacity: usize,
    captured: Arc<Mutex<Captured>>,
}

#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    dropped: usize,
}

impl CappedOutput {
    pub(crate) fn new(capacity: usize) -> CappedOutput {
        CappedOutput {
            capacity,
            captured: Arc::default(),
        }
    }

    fn take(&self, bytes: &[u8]) {
        let mut c = self.captured.lock().unwrap_or_else(|p| p.into_inner());
        let room = self.capacity.saturating_sub(c.kept.len());
        let keep = room.min(bytes.len());
        c.kept.extend_from_slice(&bytes[..keep]);
        c.dropped += bytes.len() - keep;
    }

    /// What was kept, and how many bytes were dropped.
    pub(crate) fn contents(&self) -> (Vec<u8>, usize) {
        let c = self.captured.lock().unwrap_or_else(|p| p.into_inner());
        (c.kept.clone(), c.dropped)
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.take(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_beyond_the_capacity_is_counted_and_dropped() {
        let out = CappedOutput::new(10);
        let mut stream = out.p2_stream();
        for _ in 0..3 {
            assert!(stream.check_write().unwrap() > 0);
            stream
                .write(bytes::Bytes::from_static(b"abcdefgh"))
                .unwrap();
        }
        stream.flush().unwrap();
        let (kept, dropped) = out.contents();
        assert_eq!(kept, b"abcdefghab");
        assert_eq!(dropped, 14);
    }
}
