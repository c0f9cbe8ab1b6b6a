//! `spate partition ...`: move a partition's replicas
//! (AlterPartitionReassignments, then ListPartitionReassignments until the
//! move is done) and elect preferred leaders (ElectLeaders), as
//! `kafka-reassign-partitions` and `kafka-leader-election` do.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use kafka_protocol::messages::alter_partition_reassignments_request::{ReassignablePartition, ReassignableTopic};
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::list_partition_reassignments_request::ListPartitionReassignmentsTopics;
use kafka_protocol::messages::*;

use crate::client::{str_bytes, Client};

#[derive(Subcommand, Debug)]
pub enum PartitionCommand {
    /// Move a partition to new replicas (the first becomes its preferred
    /// leader), e.g. `spate partition move orders/0 --to 2,3,1`; waits
    /// until the move is done unless --no-wait.
    Move {
        /// TOPIC/PARTITION
        partition: String,
        /// Comma-separated node ids.
        #[arg(long)]
        to: String,
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the move, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
    },
    /// Cancel a move under way.
    CancelMove { partition: String },
    /// Partitions being moved: replicas, adding, removing.
    Moves,
    /// Give partitions back to their preferred leaders (all partitions, or
    /// the TOPIC/PARTITION named).
    ElectLeaders { partitions: Vec<String> },
}

/// `spate partition ...`.
pub fn partition(brokers: &str, command: PartitionCommand) -> Result<()> {
    let mut client = Client::connect_kafka(brokers)?;
    let mut out = std::io::stdout().lock();
    match command {
        PartitionCommand::Move { partition, to, no_wait, timeout_s } => {
            let (topic, index) = parse_partition(&partition)?;
            let replicas: Vec<i32> = to
                .split(',')
                .map(|n| n.trim().parse::<i32>().with_context(|| format!("node id {n:?} in --to")))
                .collect::<Result<_>>()?;
            reassign(&mut client, &topic, index, Some(replicas.clone()))?;
            writeln!(out, "moving {topic}/{index} to {replicas:?}")?;
            if !no_wait {
                let deadline = Instant::now() + Duration::from_secs(timeout_s);
                while moving(&mut client, &topic, index)? {
                    if Instant::now() >= deadline {
                        bail!("{topic}/{index} is still moving after {timeout_s} s (see `spate partition moves`)");
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                writeln!(out, "{topic}/{index} now has replicas {replicas:?}")?;
            }
        }
        PartitionCommand::CancelMove { partition } => {
            let (topic, index) = parse_partition(&partition)?;
            reassign(&mut client, &topic, index, None)?;
            writeln!(out, "cancelled the move of {topic}/{index}")?;
        }
        PartitionCommand::Moves => {
            let resp = list_moves(&mut client, None)?;
            writeln!(out, "{:<40} {:<16} {:<12} {:<12}", "PARTITION", "REPLICAS", "ADDING", "REMOVING")?;
            for t in &resp.topics {
                for p in &t.partitions {
                    let ids = |v: &[BrokerId]| format!("{:?}", v.iter().map(|b| b.0).collect::<Vec<_>>());
                    let name = format!("{}/{}", t.name.0.as_str(), p.partition_index);
                    let (replicas, adding, removing) =
                        (ids(&p.replicas), ids(&p.adding_replicas), ids(&p.removing_replicas));
                    writeln!(out, "{name:<40} {replicas:<16} {adding:<12} {removing:<12}")?;
                }
            }
        }
        PartitionCommand::ElectLeaders { partitions } => {
            let mut req = ElectLeadersRequest::default();
            req.election_type = 0; // preferred
            req.timeout_ms = 30_000;
            if !partitions.is_empty() {
                let mut topics: Vec<TopicPartitions> = Vec::new();
                for named in &partitions {
                    let (topic, index) = parse_partition(named)?;
                    match topics.iter_mut().find(|t| t.topic.0.as_str() == topic) {
                        Some(t) => t.partitions.push(index),
                        None => {
                            let mut t = TopicPartitions::default();
                            t.topic = TopicName(str_bytes(&topic));
                            t.partitions.push(index);
                            topics.push(t);
                        }
                    }
                }
                req.topic_partitions = Some(topics);
            }
            let resp: ElectLeadersResponse = client.call(ApiKey::ElectLeaders, 2, &req)?;
            crate::client::check(resp.error_code, "elect leaders")?;
            for t in &resp.replica_election_results {
                for p in &t.partition_result {
                    let outcome = match p.error_code {
                        0 => "elected its preferred leader".to_string(),
                        84 => "already led by its preferred leader".to_string(), // ELECTION_NOT_NEEDED
                        code => format!("error {code}: {}", p.error_message.as_deref().unwrap_or("")),
                    };
                    writeln!(out, "{}/{}: {outcome}", t.topic.0.as_str(), p.partition_id)?;
                }
            }
        }
    }
    Ok(())
}

/// "orders/3" → ("orders", 3).
fn parse_partition(named: &str) -> Result<(String, i32)> {
    let Some((topic, index)) = named.rsplit_once('/') else {
        bail!("name a partition as TOPIC/PARTITION, not {named:?}")
    };
    let index = index.parse().with_context(|| format!("partition number in {named:?}"))?;
    Ok((topic.to_string(), index))
}

fn reassign(client: &mut Client, topic: &str, index: i32, replicas: Option<Vec<i32>>) -> Result<()> {
    let mut p = ReassignablePartition::default();
    p.partition_index = index;
    p.replicas = replicas.map(|r| r.into_iter().map(BrokerId).collect());
    let mut t = ReassignableTopic::default();
    t.name = TopicName(str_bytes(topic));
    t.partitions.push(p);
    let mut req = AlterPartitionReassignmentsRequest::default();
    req.timeout_ms = 30_000;
    req.allow_replication_factor_change = true;
    req.topics.push(t);
    let resp: AlterPartitionReassignmentsResponse = client.call(ApiKey::AlterPartitionReassignments, 0, &req)?;
    crate::client::check(resp.error_code, "reassign")?;
    for t in &resp.responses {
        for p in &t.partitions {
            let message = p.error_message.as_deref().unwrap_or("").to_string();
            crate::client::check(p.error_code, &format!("move {topic}/{index}: {message}"))?;
        }
    }
    Ok(())
}

fn list_moves(client: &mut Client, only: Option<(&str, i32)>) -> Result<ListPartitionReassignmentsResponse> {
    let mut req = ListPartitionReassignmentsRequest::default();
    req.timeout_ms = 30_000;
    req.topics = only.map(|(topic, index)| {
        let mut t = ListPartitionReassignmentsTopics::default();
        t.name = TopicName(str_bytes(topic));
        t.partition_indexes.push(index);
        vec![t]
    });
    let resp: ListPartitionReassignmentsResponse = client.call(ApiKey::ListPartitionReassignments, 0, &req)?;
    crate::client::check(resp.error_code, "list reassignments")?;
    Ok(resp)
}

fn moving(client: &mut Client, topic: &str, index: i32) -> Result<bool> {
    let resp = list_moves(client, Some((topic, index)))?;
    Ok(resp.topics.iter().any(|t| t.partitions.iter().any(|p| p.partition_index == index)))
}
