//! DescribeConfigs: topic configs (overrides and defaults) and a read-only
//! view of the broker settings behind them.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use super::{decode_body, FrameError};
use crate::broker::metadata::{default_config_value, TOPIC_CONFIG_KEYS};
use crate::broker::Broker;
use crate::protocol::{encode, str_bytes, Reply, Request};

pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;
const TYPE_STRING: i8 = 2;
const TYPE_LONG: i8 = 5;

pub fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: DescribeConfigsRequest = decode_body(request)?;
    let meta = broker.meta();
    let defaults = broker.config.log_defaults();
    let mut response = DescribeConfigsResponse::default();
    for resource in &body.resources {
        let mut out = DescribeConfigsResult::default();
        out.resource_type = resource.resource_type;
        out.resource_name = resource.resource_name.clone();
        // Null (or an empty list) asks for every key.
        let wanted = |key: &str| {
            resource
                .configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.is_empty() || keys.iter().any(|k| k.as_str() == key))
        };
        match resource.resource_type {
            RESOURCE_TOPIC => match meta.topic(resource.resource_name.as_str()) {
                None => {
                    out.error_code = ResponseError::UnknownTopicOrPartition.code();
                    out.error_message = Some(str_bytes("unknown topic"));
                }
                Some(topic) => {
                    for key in TOPIC_CONFIG_KEYS.iter().filter(|k| wanted(k)) {
                        let (value, source) = match topic.configs.get(*key) {
                            Some(v) => (v.clone(), SOURCE_TOPIC),
                            None => (default_config_value(key, &defaults).expect("known key"), SOURCE_DEFAULT),
                        };
                        out.configs.push(entry(key, &value, source, false));
                    }
                }
            },
            RESOURCE_BROKER => {
                let c = &broker.config;
                let settings = [
                    ("num.partitions", c.default_partitions.to_string()),
                    ("auto.create.topics.enable", c.auto_create_topics.to_string()),
                    ("log.segment.bytes", c.segment_bytes.to_string()),
                    ("log.retention.ms", c.retention_ms.to_string()),
                    ("log.retention.bytes", c.retention_bytes.to_string()),
                    ("message.max.bytes", c.max_message_bytes.to_string()),
                    ("socket.request.max.bytes", c.socket_request_max_bytes.to_string()),
                    ("log.flush.interval.ms", c.flush_interval_ms.to_string()),
                ];
                for (key, value) in settings.iter().filter(|(k, _)| wanted(k)) {
                    out.configs.push(entry(key, value, SOURCE_STATIC_BROKER, true));
                }
            }
            other => {
                out.error_code = ResponseError::InvalidRequest.code();
                out.error_message = Some(str_bytes(&format!("resource type {other} is not supported")));
            }
        }
        response.results.push(out);
    }
    Ok(encode(request, &response))
}

fn entry(key: &str, value: &str, source: i8, read_only: bool) -> DescribeConfigsResourceResult {
    let mut e = DescribeConfigsResourceResult::default();
    e.name = str_bytes(key);
    e.value = Some(str_bytes(value));
    e.read_only = read_only;
    e.config_source = source;
    e.config_type = if value.parse::<i64>().is_ok() { TYPE_LONG } else { TYPE_STRING };
    e
}
