//! WebSocket → byte stream bridge, so MQTT-over-WebSocket and
//! STOMP-over-WebSocket run the same adapter code as plain TCP.
//!
//! Reads: the payload of every binary or text message, in order (ping/pong
//! are answered by the WebSocket layer; close ends the stream). Writes are
//! buffered and sent as one message per `flush`, so a driver that coalesces
//! its writes produces one frame per turn.

use axum::extract::ws::{Message, WebSocket};
use bytes::{Bytes, BytesMut};
use futures_util::{Sink, Stream};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How outgoing bytes are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Always binary frames (MQTT requires them, `[MQTT-6.0.0-1]`).
    Binary,
    /// Text frames when the bytes are UTF-8, binary otherwise (what STOMP
    /// clients in browsers expect).
    TextIfUtf8,
}

/// A WebSocket seen as an `AsyncRead + AsyncWrite` byte stream.
pub struct WsStream {
    ws: WebSocket,
    kind: FrameKind,
    read: Bytes,
    write: BytesMut,
    /// Max bytes buffered before `poll_write` pushes back.
    max_write: usize,
    closed: bool,
}

impl std::fmt::Debug for WsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsStream")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl WsStream {
    pub fn new(ws: WebSocket, kind: FrameKind) -> Self {
        WsStream {
            ws,
            kind,
            read: Bytes::new(),
            write: BytesMut::new(),
            max_write: 1 << 20,
            closed: false,
        }
    }

    fn to_io(e: axum::Error) -> io::Error {
        io::Error::new(io::ErrorKind::BrokenPipe, e)
    }

    fn poll_send_buffered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(Self::to_io)?;
        let data = self.write.split().freeze();
        let msg = match self.kind {
            FrameKind::Binary => Message::Binary(data),
            FrameKind::TextIfUtf8 => match std::str::from_utf8(&data) {
                Ok(_) => match axum::extract::ws::Utf8Bytes::try_from(data) {
                    Ok(t) => Message::Text(t),
                    Err(_) => return Poll::Ready(Err(io::Error::other("utf-8"))),
                },
                Err(_) => Message::Binary(data),
            },
        };
        Pin::new(&mut self.ws)
            .start_send(msg)
            .map_err(Self::to_io)?;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for WsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.read.is_empty() {
                let n = self.read.len().min(buf.remaining());
                let chunk = self.read.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            if self.closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                None => {
                    self.closed = true;
                }
                Some(Err(e)) => return Poll::Ready(Err(Self::to_io(e))),
                Some(Ok(Message::Binary(b))) => self.read = b,
                Some(Ok(Message::Text(t))) => self.read = Bytes::from(t),
                Some(Ok(Message::Close(_))) => self.closed = true,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            }
        }
    }
}

impl AsyncWrite for WsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.write.len() >= self.max_write {
            ready!(self.poll_send_buffered(cx))?;
            ready!(Pin::new(&mut self.ws).poll_flush(cx)).map_err(Self::to_io)?;
        }
        self.write.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_buffered(cx))?;
        Pin::new(&mut self.ws).poll_flush(cx).map_err(Self::to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.ws).poll_close(cx).map_err(Self::to_io)
    }
}
