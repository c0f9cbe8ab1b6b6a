//! Fault injection under the storage code, for tests: chosen writes,
//! fallocates, fdatasyncs, opens and the cleaner's renames fail with an
//! errno, or (writes) complete short, or the process aborts there (as a
//! `kill -9` at exactly that step would stop it). Off unless rules are installed, by the `SPATE_FAULTS` environment
//! variable at start or by [`set_rules`] in-process; when off, each storage
//! call pays one relaxed atomic load.
//!
//! `SPATE_FAULTS` holds rules separated by `;`, each a comma-separated list of
//! `op=write|fallocate|fdatasync|open|rename`, `error=ENOSPC|EIO|EMFILE|short|abort`,
//! `after=N` (let the first N calls of that op pass; default 0),
//! `times=M` (then fail M calls; default 1; 0 = forever), and
//! `path=S` (only files whose path contains S). Example:
//! `op=write,error=ENOSPC,after=200,times=50;op=fdatasync,error=EIO,after=40`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Write,
    Fallocate,
    Fdatasync,
    Open,
    /// The log cleaner's renames (committing a clean, finishing its swap).
    Rename,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Errno(i32),
    /// A write that completes with fewer bytes than asked.
    Short,
    /// The process aborts at this call, as if killed.
    Abort,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub op: Op,
    pub fault: Fault,
    pub after: u64,
    /// 0: fail forever once `after` calls have passed.
    pub times: u64,
    pub path: Option<String>,
    seen: u64,
}

impl Rule {
    pub fn new(op: Op, fault: Fault, after: u64, times: u64) -> Rule {
        Rule { op, fault, after, times, path: None, seen: 0 }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static RULES: Mutex<Vec<Rule>> = Mutex::new(Vec::new());

/// Replaces the rules (an empty list turns injection off).
pub fn set_rules(rules: Vec<Rule>) {
    let mut guard = RULES.lock().unwrap_or_else(|e| e.into_inner());
    ENABLED.store(!rules.is_empty(), Ordering::Release);
    *guard = rules;
}

/// Installs rules from `SPATE_FAULTS`, if set. Returns an error for a rule
/// that does not parse, so a test never runs without the faults it asked for.
pub fn init_from_env() -> Result<(), String> {
    let Ok(spec) = std::env::var("SPATE_FAULTS") else { return Ok(()) };
    let rules = parse(&spec)?;
    tracing::warn!(rules = rules.len(), "fault injection enabled (SPATE_FAULTS)");
    set_rules(rules);
    Ok(())
}

pub fn parse(spec: &str) -> Result<Vec<Rule>, String> {
    spec.split(';').filter(|r| !r.trim().is_empty()).map(parse_rule).collect()
}

fn parse_rule(text: &str) -> Result<Rule, String> {
    let mut rule = Rule::new(Op::Write, Fault::Errno(libc::EIO), 0, 1);
    for field in text.split(',') {
        let (key, value) =
            field.split_once('=').ok_or_else(|| format!("fault rule field {field:?}: want key=value"))?;
        match key.trim() {
            "op" => rule.op = parse_op(value.trim())?,
            "error" => rule.fault = parse_fault(value.trim())?,
            "after" => rule.after = value.trim().parse().map_err(|e| format!("after: {e}"))?,
            "times" => rule.times = value.trim().parse().map_err(|e| format!("times: {e}"))?,
            "path" => rule.path = Some(value.trim().to_string()),
            other => return Err(format!("unknown fault rule key {other:?}")),
        }
    }
    Ok(rule)
}

fn parse_op(value: &str) -> Result<Op, String> {
    Ok(match value {
        "write" => Op::Write,
        "fallocate" => Op::Fallocate,
        "fdatasync" => Op::Fdatasync,
        "open" => Op::Open,
        "rename" => Op::Rename,
        other => return Err(format!("unknown fault op {other:?}")),
    })
}

fn parse_fault(value: &str) -> Result<Fault, String> {
    Ok(match value {
        "ENOSPC" => Fault::Errno(libc::ENOSPC),
        "EIO" => Fault::Errno(libc::EIO),
        "EMFILE" => Fault::Errno(libc::EMFILE),
        "short" => Fault::Short,
        "abort" => Fault::Abort,
        other => return Err(format!("unknown fault {other:?}")),
    })
}

/// The fault to inject into this call of `op` on `path`, if any.
#[inline]
pub fn check(op: Op, path: &Path) -> Option<Fault> {
    if !ENABLED.load(Ordering::Acquire) {
        return None;
    }
    let mut rules = RULES.lock().unwrap_or_else(|e| e.into_inner());
    let path = path.to_string_lossy();
    for rule in rules.iter_mut() {
        if rule.op != op || rule.path.as_deref().is_some_and(|p| !path.contains(p)) {
            continue;
        }
        rule.seen += 1;
        let failing = rule.seen > rule.after && (rule.times == 0 || rule.seen <= rule.after + rule.times);
        if failing && rule.fault == Fault::Abort {
            eprintln!("SPATE_FAULTS: aborting at {op:?} of {path}");
            std::process::abort();
        }
        if failing {
            return Some(rule.fault);
        }
    }
    None
}

/// `check` as an `io::Error` for ops that cannot complete short.
#[inline]
pub fn fail(op: Op, path: &Path) -> std::io::Result<()> {
    match check(op, path) {
        None => Ok(()),
        Some(Fault::Errno(errno)) => Err(injected(errno)),
        Some(Fault::Short | Fault::Abort) => Err(injected(libc::EIO)),
    }
}

pub fn injected(errno: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(errno)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules() {
        let rules = parse("op=write,error=ENOSPC,after=2,times=3;op=open,error=EMFILE,path=seg").unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].op, Op::Write);
        assert_eq!(rules[0].fault, Fault::Errno(libc::ENOSPC));
        assert_eq!((rules[0].after, rules[0].times), (2, 3));
        assert_eq!(rules[1].path.as_deref(), Some("seg"));
        assert!(parse("op=nope").is_err());
        assert!(parse("error=EFOO").is_err());
    }
}
