//! DescribeLogDirs: the data directory of this node, every replica in it
//! (size and offset lag), and the directory's total and usable bytes. spate
//! has one data directory per node; replicas of all shards are listed.

use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};

use super::{decode_body, FrameError};
use crate::broker::Broker;
use crate::protocol::{encode, str_bytes, Reply, Request};

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: DescribeLogDirsRequest = decode_body(request)?;
    // Null asks for every replica; otherwise only the named partitions.
    let wanted: Option<HashSet<(&str, i32)>> = body
        .topics
        .as_ref()
        .map(|topics| topics.iter().flat_map(|t| t.partitions.iter().map(move |p| (t.topic.0.as_str(), *p))).collect());
    let replicas = broker.all_local_replicas().await;
    let meta = broker.meta();
    let names: BTreeMap<[u8; 16], &str> = meta.topics.values().map(|t| (t.id, t.name.as_str())).collect();
    let mut by_topic: BTreeMap<&str, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for replica in &replicas {
        let Some(&name) = names.get(&replica.tp.topic_id) else { continue };
        if wanted.as_ref().is_some_and(|w| !w.contains(&(name, replica.tp.partition))) {
            continue;
        }
        let mut partition = DescribeLogDirsPartition::default();
        partition.partition_index = replica.tp.partition;
        partition.partition_size = replica.size_bytes as i64;
        partition.offset_lag = replica.offset_lag;
        by_topic.entry(name).or_default().push(partition);
    }
    let mut result = DescribeLogDirsResult::default();
    result.log_dir = str_bytes(&data_dir_path(broker));
    match disk_space(&broker.config.data_dir) {
        Ok((total, usable)) => (result.total_bytes, result.usable_bytes) = (total, usable),
        Err(e) => {
            tracing::warn!(dir = %broker.config.data_dir.display(), "statvfs: {e}");
            result.error_code = ResponseError::KafkaStorageError.code();
            (result.total_bytes, result.usable_bytes) = (-1, -1);
        }
    }
    result.topics = by_topic
        .into_iter()
        .map(|(name, mut partitions)| {
            partitions.sort_by_key(|p| p.partition_index);
            let mut topic = DescribeLogDirsTopic::default();
            topic.name = TopicName(str_bytes(name));
            topic.partitions = partitions;
            topic
        })
        .collect();
    let mut response = DescribeLogDirsResponse::default();
    response.results.push(result);
    Ok(encode(request, &response))
}

/// The data directory as an absolute path, as Kafka lists `log.dirs`.
fn data_dir_path(broker: &Broker) -> String {
    let dir = &broker.config.data_dir;
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone()).display().to_string()
}

/// (total, usable) bytes of the file system holding `dir`.
pub fn disk_space(dir: &std::path::Path) -> std::io::Result<(i64, i64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `stat` a valid out-parameter.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let block = stat.f_frsize as i64;
    Ok((stat.f_blocks as i64 * block, stat.f_bavail as i64 * block))
}
