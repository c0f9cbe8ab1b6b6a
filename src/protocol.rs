//! Kafka framing shared by the handlers: the request as decoded from one
//! frame, and responses as lists of byte parts, so that stored record bytes
//! can be sent without being copied into a response buffer.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Encodable, StrBytes};

/// One decoded request: its header, and the body bytes (still encoded).
pub struct Request {
    pub api_key: ApiKey,
    pub header: RequestHeader,
    pub body: Bytes,
    /// The client's address ("ip:port"), where known.
    pub peer: Option<std::rc::Rc<str>>,
}

impl Request {
    pub fn version(&self) -> i16 {
        self.header.request_api_version
    }

    /// The client's host as Kafka reports it in group descriptions ("/ip").
    pub fn client_host(&self) -> String {
        let peer = self.peer.as_deref().unwrap_or("");
        let host = peer.rsplit_once(':').map_or(peer, |(h, _)| h);
        format!("/{}", host.trim_start_matches('[').trim_end_matches(']'))
    }

    /// The request header's client id ("" when null).
    pub fn client_id(&self) -> String {
        self.header.client_id.as_deref().unwrap_or("").to_string()
    }
}

/// What a handler answers.
pub enum Reply {
    /// Length-prefixed response, in parts to write in order.
    Send(Vec<Bytes>),
    /// acks=0 produce: no response.
    Nothing,
    /// Close the connection (Kafka does this on an acks=0 produce error).
    Close(String),
}

/// Encodes `body` with its response header into one length-prefixed frame.
pub fn encode<R: Encodable>(request: &Request, body: &R) -> Reply {
    encode_version(request, request.version(), body)
}

/// As [`encode`], at an explicit body version (ApiVersions falls back to v0).
pub fn encode_version<R: Encodable>(request: &Request, version: i16, body: &R) -> Reply {
    let header_version = request.api_key.response_header_version(version);
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let mut header = ResponseHeader::default();
    header.correlation_id = request.header.correlation_id;
    let encoded = header.encode(&mut buf, header_version).and_then(|_| body.encode(&mut buf, version));
    if let Err(e) = encoded {
        return Reply::Close(format!("cannot encode {:?} v{version} response: {e}", request.api_key));
    }
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Reply::Send(vec![buf.freeze()])
}

/// Builds a frame from small encoded fields and large shared parts: fields
/// go into a scratch buffer, shared parts are appended by reference.
pub struct PartsWriter {
    parts: Vec<Bytes>,
    scratch: BytesMut,
    total: usize,
}

impl Default for PartsWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl PartsWriter {
    pub fn new() -> PartsWriter {
        let mut scratch = BytesMut::with_capacity(1024);
        scratch.put_i32(0); // frame length, patched by finish
        PartsWriter { parts: Vec::new(), scratch, total: 0 }
    }

    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.scratch
    }

    /// Appends `bytes` without copying.
    pub fn put_shared(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.flush_scratch();
        self.total += bytes.len();
        self.parts.push(bytes);
    }

    fn flush_scratch(&mut self) {
        if !self.scratch.is_empty() {
            self.total += self.scratch.len();
            self.parts.push(self.scratch.split().freeze());
        }
    }

    /// Patches the frame length and returns the parts.
    pub fn finish(mut self) -> Vec<Bytes> {
        self.flush_scratch();
        let len = i32::try_from(self.total - 4).expect("responses are capped below 2 GiB (fetch_max_bytes)");
        let mut first = BytesMut::from(&self.parts[0][..]);
        first[..4].copy_from_slice(&len.to_be_bytes());
        self.parts[0] = first.freeze();
        self.parts
    }

    pub fn put_unsigned_varint(&mut self, mut v: u32) {
        while v >= 0x80 {
            self.scratch.put_u8((v as u8) | 0x80);
            v >>= 7;
        }
        self.scratch.put_u8(v as u8);
    }

    /// A string: compact (varint length + 1) in flexible versions, else i16 length.
    pub fn put_string(&mut self, s: &str, compact: bool) {
        if compact {
            self.put_unsigned_varint(s.len() as u32 + 1);
        } else {
            self.scratch.put_i16(s.len() as i16);
        }
        self.scratch.put_slice(s.as_bytes());
    }

    /// An array length: compact (varint n + 1) or i32.
    pub fn put_array_len(&mut self, n: usize, compact: bool) {
        if compact {
            self.put_unsigned_varint(n as u32 + 1);
        } else {
            self.scratch.put_i32(n as i32);
        }
    }

    /// An empty tagged-field section (flexible versions only).
    pub fn put_no_tags(&mut self) {
        self.scratch.put_u8(0);
    }
}

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_writer_frames_shared_bytes_without_copying() {
        let shared = Bytes::from_static(b"records!");
        let mut w = PartsWriter::new();
        w.buf().put_i32(7);
        w.put_shared(shared.clone());
        w.put_string("ab", true);
        let parts = w.finish();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1].as_ptr(), shared.as_ptr(), "shared part is not copied");
        let all: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        assert_eq!(&all[..4], &((all.len() - 4) as i32).to_be_bytes());
        assert_eq!(&all[8..16], b"records!");
        assert_eq!(&all[16..], &[3, b'a', b'b']);
    }
}
