//! ApiVersions: the table of supported APIs. An unsupported version is
//! answered in the v0 format with UNSUPPORTED_VERSION, as clients expect.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::ApiVersionsResponse;

use super::{supported_range, SUPPORTED_APIS};
use crate::protocol::{encode_version, Reply, Request};

pub fn handle(request: &Request) -> Reply {
    let mut response = ApiVersionsResponse::default();
    response.api_keys = SUPPORTED_APIS
        .iter()
        .map(|&(key, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = key as i16;
            v.min_version = min;
            v.max_version = max;
            v
        })
        .collect();
    let (min, max) = supported_range(request.api_key).expect("ApiVersions is supported");
    let version = request.version();
    if !(min..=max).contains(&version) {
        response.error_code = ResponseError::UnsupportedVersion.code();
        return encode_version(request, 0, &response);
    }
    encode_version(request, version, &response)
}
