//! DescribeConfigs: a topic's configs (every standard one, with where its
//! value comes from), a broker's settings under their Kafka names (the
//! dynamic ones with their source, the static ones read-only), and the
//! cluster-wide dynamic defaults (broker resource "").

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use super::{decode_body, FrameError};
use crate::broker::configs::{self, Kind, Resolved, Source, TOPIC_CONFIGS};
use crate::broker::Broker;
use crate::config::Config;
use crate::protocol::{encode, str_bytes, Reply, Request};

pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

/// One described config.
struct Described<'a> {
    name: &'a str,
    resolved: Resolved,
    kind: Kind,
    read_only: bool,
    /// Where else a value is set, most specific first (include_synonyms).
    synonyms: Vec<(&'a str, Resolved)>,
}

pub fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: DescribeConfigsRequest = decode_body(request)?;
    let meta = broker.meta();
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
        let name = resource.resource_name.as_str();
        let described = match resource.resource_type {
            RESOURCE_TOPIC => match meta.topic(name) {
                Some(topic) => Ok(describe_topic(&broker.config, &topic.configs, &meta.broker_configs)),
                None => Err((ResponseError::UnknownTopicOrPartition, format!("The topic '{name}' does not exist."))),
            },
            RESOURCE_BROKER if name.is_empty() => Ok(describe_cluster_defaults(&meta.broker_configs)),
            RESOURCE_BROKER if name == broker.config.node_id.to_string() => {
                Ok(describe_broker(&broker.config, &meta.broker_configs))
            }
            RESOURCE_BROKER => Err((
                ResponseError::InvalidRequest,
                format!(
                    "Unexpected broker id, expected {} or empty string, but received {name}",
                    broker.config.node_id
                ),
            )),
            other => Err((ResponseError::InvalidRequest, format!("resource type {other} is not supported"))),
        };
        match described {
            Ok(configs) => {
                let version = request.version();
                out.configs = configs
                    .into_iter()
                    .filter(|d| wanted(d.name))
                    .map(|d| entry(d, body.include_synonyms, version))
                    .collect();
            }
            Err((error, message)) => {
                out.error_code = error.code();
                out.error_message = Some(str_bytes(&message));
            }
        }
        response.results.push(out);
    }
    Ok(encode(request, &response))
}

fn describe_topic<'a>(
    config: &Config,
    overrides: &BTreeMap<String, String>,
    dynamic: &BTreeMap<String, BTreeMap<String, String>>,
) -> Vec<Described<'a>> {
    TOPIC_CONFIGS
        .iter()
        .map(|def| {
            let resolved = configs::resolve_topic_config(def, overrides, config, dynamic);
            let mut synonyms = Vec::new();
            if resolved.source == Source::Topic {
                synonyms.push((def.name, resolved.clone()));
            }
            if let Some(key) = def.broker_key {
                synonyms.extend(broker_synonyms(key, config, dynamic));
            }
            Described { name: def.name, resolved, kind: def.kind, read_only: false, synonyms }
        })
        .collect()
}

/// The values of a dynamic broker key, most specific first: this node's,
/// the cluster default, the static one.
fn broker_synonyms<'a>(
    key: &'a str,
    config: &Config,
    dynamic: &BTreeMap<String, BTreeMap<String, String>>,
) -> Vec<(&'a str, Resolved)> {
    let mut out = Vec::new();
    let set = |resource: &str| dynamic.get(resource).and_then(|c| c.get(key)).cloned();
    if let Some(value) = set(&config.node_id.to_string()) {
        out.push((key, Resolved { value, source: Source::DynamicBroker }));
    }
    if let Some(value) = set("") {
        out.push((key, Resolved { value, source: Source::DynamicDefaultBroker }));
    }
    let fallback = configs::resolve_broker_key(key, config, &BTreeMap::new());
    if fallback.source == Source::StaticBroker {
        out.push((key, fallback));
    }
    let default = configs::static_topic_default(key, &Config::default());
    out.push((key, Resolved { value: default, source: Source::Default }));
    out
}

/// This node's settings: the dynamic keys, then the static ones.
fn describe_broker<'a>(config: &Config, dynamic: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Described<'a>> {
    let mut out: Vec<Described> = TOPIC_CONFIGS
        .iter()
        .filter_map(|def| def.broker_key.map(|key| (def, key)))
        .map(|(def, key)| Described {
            name: key,
            resolved: configs::resolve_broker_key(key, config, dynamic),
            kind: def.kind,
            read_only: false,
            synonyms: broker_synonyms(key, config, dynamic),
        })
        .collect();
    let defaults = Config::default();
    for setting in configs::STATIC_BROKER_SETTINGS {
        let value = (setting.value)(config);
        let source = if value == (setting.value)(&defaults) { Source::Default } else { Source::StaticBroker };
        let resolved = Resolved { value, source };
        let synonyms = vec![(setting.name, resolved.clone())];
        out.push(Described { name: setting.name, resolved, kind: setting.kind, read_only: true, synonyms });
    }
    out.sort_by_key(|d| d.name);
    out.dedup_by_key(|d| d.name); // min.insync.replicas etc. are topic and broker keys at once
    out
}

/// Resource "": only what is set cluster-wide.
fn describe_cluster_defaults<'a>(dynamic: &'a BTreeMap<String, BTreeMap<String, String>>) -> Vec<Described<'a>> {
    dynamic
        .get("")
        .into_iter()
        .flatten()
        .map(|(key, value)| {
            let resolved = Resolved { value: value.clone(), source: Source::DynamicDefaultBroker };
            let kind = configs::broker_key_kind(key).unwrap_or(Kind::String);
            Described { name: key, resolved: resolved.clone(), kind, read_only: false, synonyms: vec![(key, resolved)] }
        })
        .collect()
}

fn entry(d: Described, include_synonyms: bool, version: i16) -> DescribeConfigsResourceResult {
    let mut e = DescribeConfigsResourceResult::default();
    e.name = str_bytes(d.name);
    e.value = Some(str_bytes(&d.resolved.value));
    e.read_only = d.read_only;
    e.config_source = d.resolved.source as i8;
    if version >= 3 {
        e.config_type = d.kind as i8;
    }
    if include_synonyms {
        e.synonyms = d
            .synonyms
            .into_iter()
            .map(|(name, r)| {
                let mut s = DescribeConfigsSynonym::default();
                s.name = str_bytes(name);
                s.value = Some(str_bytes(&r.value));
                s.source = r.source as i8;
                s
            })
            .collect();
    }
    e
}
