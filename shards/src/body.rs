//! The response body: a whole buffer (almost every answer) or a stream of chunks (the live
//! event stream, large media). One enum instead of a boxed body, so the common case costs no
//! allocation.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::Stream;
use hyper::body::{Frame, SizeHint};

/// Chunks of a streamed body; an error ends the response abruptly (the client sees a cut).
pub type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>>>>;

pub enum Body {
    /// The whole body; `None` once sent.
    Full(Option<Bytes>),
    Stream(Chunks),
}

impl Body {
    pub fn full(bytes: Bytes) -> Body {
        if bytes.is_empty() {
            Body::Full(None)
        } else {
            Body::Full(Some(bytes))
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(chunks) => chunks
                .as_mut()
                .poll_next(cx)
                .map(|next| next.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}
