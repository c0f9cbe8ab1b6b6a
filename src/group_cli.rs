//! rpk-style `spate group ...` commands: list and describe groups (members,
//! assignments, committed offsets and lag), move an empty group's offsets,
//! delete groups and offsets. Nothing here changes a group unless asked to.

use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use crate::cli::partition_count;
use crate::client::{check, Client};

/// println! that returns an error instead of panicking when stdout is a
/// closed pipe (`spate group list | head -1`); `main` ends quietly then.
macro_rules! say {
    ($($arg:tt)*) => { writeln!(std::io::stdout(), $($arg)*)? };
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// List groups with their protocol type and state.
    List,
    /// Show a group: state, protocol, members and their assignments, and the
    /// committed offset, log end and lag of every partition it committed.
    Describe { group: String },
    /// Move an empty group's committed offsets on a topic.
    ResetOffsets(ResetArgs),
    /// Delete an empty group and its committed offsets.
    Delete { group: String },
    /// Delete a group's committed offsets of one topic.
    DeleteOffsets {
        group: String,
        #[arg(long)]
        topic: String,
    },
}

#[derive(Args, Debug)]
pub struct ResetArgs {
    pub group: String,
    #[arg(long)]
    pub topic: String,
    #[arg(long, group = "target")]
    pub to_earliest: bool,
    #[arg(long, group = "target")]
    pub to_latest: bool,
    /// ISO 8601 time: the first record at or after it (the end if none).
    #[arg(long, group = "target", value_name = "ISO")]
    pub to_datetime: Option<String>,
    #[arg(long, group = "target", value_name = "N")]
    pub to_offset: Option<i64>,
    /// Move each committed offset by N (negative: back).
    #[arg(long, group = "target", value_name = "N", allow_hyphen_values = true)]
    pub shift_by: Option<i64>,
    /// Print the new offsets without committing them.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn group(brokers: &str, command: GroupCommand) -> Result<()> {
    let mut client = Client::connect_kafka(brokers)?;
    match command {
        GroupCommand::List => {
            let mut groups = client.list_groups()?;
            groups.sort();
            say!("{:<40} {:<12} STATE", "GROUP", "PROTOCOL");
            for (id, protocol_type, state) in groups {
                say!("{id:<40} {protocol_type:<12} {state}");
            }
        }
        GroupCommand::Describe { group } => describe(&mut client, &group)?,
        GroupCommand::ResetOffsets(args) => reset(&mut client, args)?,
        GroupCommand::Delete { group } => {
            client.find_coordinator(&group)?;
            client.delete_group(&group)?;
            say!("deleted group {group}");
        }
        GroupCommand::DeleteOffsets { group, topic } => {
            client.find_coordinator(&group)?;
            let partitions = partitions_of(&mut client, &topic)?;
            client.delete_offsets(&group, &topic, &partitions)?;
            say!("deleted the committed offsets of {group} on {topic}");
        }
    }
    Ok(())
}

fn describe(client: &mut Client, group: &str) -> Result<()> {
    client.find_coordinator(group)?;
    let g = client.describe_group(group)?;
    if g.group_state.as_str() == "Dead" {
        bail!("no group {group}");
    }
    say!(
        "group {group}: {} (protocol type {:?}, protocol {:?})",
        g.group_state.as_str(),
        g.protocol_type.as_str(),
        g.protocol_data.as_str()
    );
    say!("{} members:", g.members.len());
    for m in &g.members {
        let assigned = consumer_assignment(&m.member_assignment)
            .map(|a| a.iter().map(|(t, ps)| format!("{t}{ps:?}")).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        let instance = m.group_instance_id.as_deref().map(|i| format!(" instance={i}")).unwrap_or_default();
        say!(
            "  {} client={} host={}{instance} {assigned}",
            m.member_id.as_str(),
            m.client_id.as_str(),
            m.client_host.as_str()
        );
    }
    let mut offsets = client.fetch_offsets(group, None)?;
    offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    say!("{:<30} {:>9} {:>14} {:>14} {:>10}", "TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG");
    for o in offsets {
        let end = client.list_offset(&o.topic, o.partition, -1)?;
        say!("{:<30} {:>9} {:>14} {:>14} {:>10}", o.topic, o.partition, o.offset, end, (end - o.offset).max(0));
    }
    Ok(())
}

fn reset(client: &mut Client, args: ResetArgs) -> Result<()> {
    let group = args.group.as_str();
    client.find_coordinator(group)?;
    let described = client.describe_group(group)?;
    let state = described.group_state.as_str();
    if !matches!(state, "Empty" | "Dead") {
        bail!(
            "group {group} is {state} with {} members: stop them before resetting its offsets",
            described.members.len()
        );
    }
    let partitions = partitions_of(client, &args.topic)?;
    let committed = client.fetch_offsets(group, Some(&[(args.topic.as_str(), partitions.clone())]))?;
    let target_time = match &args.to_datetime {
        Some(text) => Some(parse_iso8601_ms(text).with_context(|| format!("--to-datetime {text:?}"))?),
        None => None,
    };
    let mut new_offsets = Vec::new();
    for p in partitions {
        let start = client.list_offset(&args.topic, p, -2)?;
        let end = client.list_offset(&args.topic, p, -1)?;
        let current = committed.iter().find(|c| c.partition == p).map_or(-1, |c| c.offset);
        let wanted = if args.to_earliest {
            start
        } else if args.to_latest {
            end
        } else if let Some(ts) = target_time {
            match client.list_offset(&args.topic, p, ts)? {
                -1 => end,
                found => found,
            }
        } else if let Some(n) = args.to_offset {
            n
        } else if let Some(n) = args.shift_by {
            if current < 0 {
                start
            } else {
                current + n
            }
        } else {
            bail!("say where to: --to-earliest, --to-latest, --to-datetime, --to-offset or --shift-by");
        };
        new_offsets.push((p, wanted.clamp(start, end)));
    }
    say!("{:<30} {:>9} {:>14}", "TOPIC", "PARTITION", "NEW-OFFSET");
    for (p, offset) in &new_offsets {
        say!("{:<30} {:>9} {:>14}", args.topic, p, offset);
    }
    if args.dry_run {
        say!("(dry run: nothing committed)");
        return Ok(());
    }
    let commits: Vec<(&str, i32, i64, &str)> =
        new_offsets.iter().map(|(p, o)| (args.topic.as_str(), *p, *o, "")).collect();
    for code in client.commit_offsets(group, -1, "", &commits)? {
        check(code, &format!("commit offsets of {group}"))?;
    }
    say!("committed the offsets of {group} on {}", args.topic);
    Ok(())
}

fn partitions_of(client: &mut Client, topic: &str) -> Result<Vec<i32>> {
    Ok((0..partition_count(client, topic, false)?).collect())
}

/// A consumer protocol assignment: (topic, partitions) pairs.
fn consumer_assignment(bytes: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    let mut b = bytes;
    let mut take = |n: usize| -> Option<&[u8]> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        b = rest;
        Some(head)
    };
    let _version = i16::from_be_bytes(take(2)?.try_into().ok()?);
    let topics = i32::from_be_bytes(take(4)?.try_into().ok()?);
    let mut out = Vec::new();
    for _ in 0..topics.clamp(0, 100_000) {
        let len = i16::from_be_bytes(take(2)?.try_into().ok()?).max(0) as usize;
        let name = String::from_utf8(take(len)?.to_vec()).ok()?;
        let count = i32::from_be_bytes(take(4)?.try_into().ok()?);
        let mut partitions = Vec::new();
        for _ in 0..count.clamp(0, 1_000_000) {
            partitions.push(i32::from_be_bytes(take(4)?.try_into().ok()?));
        }
        out.push((name, partitions));
    }
    Some(out)
}

/// Milliseconds since the epoch of an ISO 8601 time: `YYYY-MM-DDTHH:MM:SS`,
/// optional `.fff`, then `Z`, `±HH:MM` or nothing (UTC).
pub fn parse_iso8601_ms(text: &str) -> Result<i64> {
    let (date, time) = text.split_once(['T', ' ']).unwrap_or((text, "00:00:00"));
    let num = |s: &str| s.parse::<i64>().with_context(|| format!("{s:?} is not a number"));
    let d: Vec<&str> = date.split('-').collect();
    if d.len() != 3 {
        bail!("expected YYYY-MM-DDTHH:MM:SS");
    }
    let (year, month, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
    let (clock, offset_min) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0)
    } else if let Some(i) = time.rfind(['+', '-']) {
        let (c, z) = time.split_at(i);
        let (h, m) = z[1..].split_once(':').unwrap_or((&z[1..], "0"));
        let minutes = num(h)? * 60 + num(m)?;
        (c, if z.starts_with('-') { -minutes } else { minutes })
    } else {
        (time, 0)
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, "0"));
    let t: Vec<&str> = hms.split(':').collect();
    let (h, mi, s) = (num(t[0])?, num(t.get(1).copied().unwrap_or("0"))?, num(t.get(2).copied().unwrap_or("0"))?);
    let millis = num(&format!("{:0<3}", &frac[..frac.len().min(3)]))?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || mi > 59 || s > 60 {
        bail!("out of range");
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 86_400 + h * 3600 + mi * 60 + s - offset_min * 60) * 1000) + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_times_parse() {
        assert_eq!(parse_iso8601_ms("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_iso8601_ms("2026-12-02T18:00:00Z").unwrap(), 1_796_234_400_000);
        assert_eq!(parse_iso8601_ms("2026-12-02T19:00:00.5+01:00").unwrap(), 1_796_234_400_500);
        assert!(parse_iso8601_ms("yesterday").is_err());
    }

    #[test]
    fn consumer_assignments_parse() {
        let mut b = vec![0u8, 0, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 5];
        b.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(consumer_assignment(&b), Some(vec![("t".to_string(), vec![3, 5])]));
    }
}
