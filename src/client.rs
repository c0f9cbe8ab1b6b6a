//! A small blocking Kafka client for the `spate` CLI commands (topic,
//! produce, consume). It speaks the same protocol any client does, through
//! the `kafka-protocol` crate; it is not used by the broker.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

pub struct Client {
    stream: TcpStream,
    correlation_id: i32,
}

impl Client {
    pub fn connect(address: &str) -> Result<Client> {
        let stream = TcpStream::connect(address).with_context(|| format!("connecting to {address}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        stream.set_nodelay(true)?;
        Ok(Client { stream, correlation_id: 0 })
    }

    /// Sends one request at `version` and decodes its response.
    pub fn call<Req: Encodable, Resp: Decodable>(&mut self, api_key: ApiKey, version: i16, request: &Req) -> Result<Resp> {
        self.correlation_id += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = api_key as i16;
        header.request_api_version = version;
        header.correlation_id = self.correlation_id;
        header.client_id = Some(StrBytes::from_static_str("spate-cli"));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header.encode(&mut buf, api_key.request_header_version(version))?;
        request.encode(&mut buf, version)?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&buf)?;

        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).context("reading response (did the broker close the connection?)")?;
        let mut body = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
        self.stream.read_exact(&mut body)?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, api_key.response_header_version(version))?;
        if header.correlation_id != self.correlation_id {
            bail!("response correlation id {} does not match request {}", header.correlation_id, self.correlation_id);
        }
        let response = Resp::decode(&mut body, version)?;
        if body.has_remaining() {
            bail!("{} unread bytes after {api_key:?} response", body.remaining());
        }
        Ok(response)
    }
}

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}
