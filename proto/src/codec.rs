//! The gRPC codec of `zbase.v1.Station`: protobuf, as tonic's own, with buffers sized by use.
//!
//! tonic's default codec allocates an 8 KiB encode buffer and an 8 KiB decode buffer for every
//! call, up front. A station holds tens of thousands of long-lived, mostly idle streams whose
//! control frames are tens of bytes, so those two buffers were most of an idle stream's memory.
//! This codec starts both buffers empty: they are allocated on first use, sized to the message
//! at hand, and grow as tonic grows them for larger messages, so snapshots of any size still
//! pass. The bytes on the wire are exactly those of tonic's protobuf codec.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Bytes each buffer holds before its first message: none, so an idle call costs nothing.
const BUFFER_SIZE: usize = 0;
/// Encoded bytes tonic gathers before handing them to HTTP/2: tonic's default (32 KiB), so a
/// burst of small frames still leaves in few DATA frames.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

/// Protobuf codec for messages `T` sent and `U` received, with lazily allocated buffers.
///
/// The generated server and client both name it (`codec_path` in `build.rs`), so every Rust
/// peer of the station shares its memory profile.
#[derive(Debug)]
pub struct LeanCodec<T, U> {
    _messages: PhantomData<fn(T) -> U>,
}

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self {
            _messages: PhantomData,
        }
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = LeanEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        LeanEncoder {
            inner: ProstEncoder::new(buffer_settings()),
        }
    }

    fn decoder(&mut self) -> Self::Decoder {
        // An empty start costs a large message nothing: tonic reserves the message's whole
        // length as soon as it has read its 5-byte header, so it is one allocation either way.
        ProstDecoder::new(buffer_settings())
    }
}

/// tonic's protobuf encoder, reserving each message's exact length before writing it.
#[derive(Debug)]
pub struct LeanEncoder<T> {
    inner: ProstEncoder<T>,
}

impl<T: Message> Encoder for LeanEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        // The buffer starts empty; without this, prost's writes would grow it several times
        // per message (every field is a separate small write).
        dst.reserve(item.encoded_len());
        self.inner.encode(item, dst)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::Frame;
    use bytes::{Bytes, BytesMut};
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    use tonic::codec::{EncodeBody, Streaming};
    use tonic::codegen::Body;
    use tonic::codegen::tokio_stream::{self, Stream};
    use tonic_prost::ProstCodec;

    fn frames() -> Vec<Frame> {
        [0, 1, 70, 9_000, 1 << 20]
            .into_iter()
            .enumerate()
            .map(|(n, len)| Frame {
                version: 1,
                code: n as u32 + 2,
                payload: Bytes::from(vec![n as u8; len]),
            })
            .collect()
    }

    fn body<E>(encoder: E) -> impl Body<Data = Bytes, Error = Status> + Send + 'static
    where
        E: Encoder<Item = Frame, Error = Status> + Send + 'static,
    {
        let source = tokio_stream::iter(frames().into_iter().map(Ok));
        EncodeBody::new_client(encoder, source, None, None)
    }

    /// Every byte a body yields; the sources are ready at once, so no poll is pending.
    fn wire(body: impl Body<Data = Bytes, Error = Status>) -> Vec<u8> {
        let mut body = pin!(body);
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = BytesMut::new();
        while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
            if let Ok(data) = frame.map(|frame| frame.into_data()) {
                out.extend_from_slice(&data.unwrap_or_default());
            }
        }
        out.to_vec()
    }

    fn messages(stream: impl Stream<Item = Result<Frame, Status>>) -> Vec<Frame> {
        let mut stream = pin!(stream);
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(Some(Ok(frame))) = stream.as_mut().poll_next(&mut cx) {
            out.push(frame);
        }
        out
    }

    /// The wire format is tonic's protobuf codec's, byte for byte.
    #[test]
    fn encodes_as_tonic_does() {
        let lean = wire(body(LeanCodec::<Frame, Frame>::default().encoder()));
        let tonic = wire(body(ProstCodec::<Frame, Frame>::default().encoder()));
        assert!(lean.len() > 1 << 20);
        assert_eq!(lean, tonic);
    }

    /// What one codec encodes, the other decodes, large messages included.
    #[test]
    fn interoperates_with_tonic() {
        let from_tonic = Streaming::new_request(
            LeanCodec::<Frame, Frame>::default().decoder(),
            body(ProstCodec::<Frame, Frame>::default().encoder()),
            None,
            Some(2 << 20),
        );
        assert_eq!(messages(from_tonic), frames());
        let from_lean = Streaming::new_request(
            ProstCodec::<Frame, Frame>::default().decoder(),
            body(LeanCodec::<Frame, Frame>::default().encoder()),
            None,
            Some(2 << 20),
        );
        assert_eq!(messages(from_lean), frames());
    }
}
