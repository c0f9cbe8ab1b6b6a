//! A follower's connection to a leader's ordinary Kafka listener: one
//! request at a time, encoded and decoded with `kafka-protocol`. Fetch
//! responses are decoded from one `Bytes` buffer, so the records of each
//! partition are slices of it, appended without another copy.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Longest response accepted: the fetch's `max_bytes` plus headroom.
const MAX_RESPONSE_BYTES: usize = 128 << 20;

pub struct LeaderConn {
    stream: TcpStream,
    correlation_id: i32,
    client_id: StrBytes,
}

impl LeaderConn {
    pub async fn connect(address: &str, node_id: i32, timeout: Duration) -> std::io::Result<LeaderConn> {
        let connect = TcpStream::connect(address);
        let stream = glommio::timer::timeout(timeout, async { Ok(connect.await.map_err(std::io::Error::from)) })
            .await
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::TimedOut, e.to_string()))??;
        stream.set_nodelay(true)?;
        let client_id = StrBytes::from_string(format!("spate-replica-{node_id}"));
        Ok(LeaderConn { stream, correlation_id: 0, client_id })
    }

    /// Sends `request` at `version` and waits up to `timeout` for its response.
    pub async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api_key: ApiKey,
        version: i16,
        request: &Req,
        timeout: Duration,
    ) -> std::io::Result<Resp> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let frame = self.encode(api_key, version, request)?;
        let correlation_id = self.correlation_id;
        let exchange = async {
            self.stream.write_all(&frame).await?;
            let mut head = [0u8; 4];
            self.stream.read_exact(&mut head).await?;
            let len = i32::from_be_bytes(head);
            if len < 4 || len as usize > MAX_RESPONSE_BYTES {
                return Err(invalid(format!("response length {len}")));
            }
            let mut body = vec![0u8; len as usize];
            self.stream.read_exact(&mut body).await?;
            Ok(Bytes::from(body))
        };
        let mut body = glommio::timer::timeout(timeout, async { Ok(exchange.await) })
            .await
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::TimedOut, e.to_string()))??;
        let header = ResponseHeader::decode(&mut body, api_key.response_header_version(version))
            .map_err(|e| invalid(format!("response header: {e}")))?;
        if header.correlation_id != correlation_id {
            return Err(invalid(format!("correlation id {} for {correlation_id}", header.correlation_id)));
        }
        let response = Resp::decode(&mut body, version).map_err(|e| invalid(format!("{api_key:?} response: {e}")))?;
        if body.has_remaining() {
            return Err(invalid(format!("{} bytes after the {api_key:?} response", body.remaining())));
        }
        Ok(response)
    }

    fn encode<Req: Encodable>(&self, api_key: ApiKey, version: i16, request: &Req) -> std::io::Result<BytesMut> {
        let mut header = RequestHeader::default();
        header.request_api_key = api_key as i16;
        header.request_api_version = version;
        header.correlation_id = self.correlation_id;
        header.client_id = Some(self.client_id.clone());
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header.encode(&mut buf, api_key.request_header_version(version)).map_err(|e| invalid(e.to_string()))?;
        request.encode(&mut buf, version).map_err(|e| invalid(e.to_string()))?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        Ok(buf)
    }
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}
