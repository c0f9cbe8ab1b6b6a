"""Crash loop (issue 6): `kill -9` the broker again and again under acks=all
producers and check that nothing it acknowledged is ever lost.

One data directory is used for every round. Each round:

1. starts spate with small segments (`segment_bytes=65536`, so rolls happen
   every few batches) and topic auto-creation off;
2. runs several confluent-kafka producer *processes* (this file started with
   `--produce`), `acks=all`, half of them idempotent, the others with
   `retries=0` so that no client retry can legitimately store a value twice.
   Every value is unique (`r<round>-p<producer>-s<seq>`); a producer appends
   `topic partition offset value` to its ack file, flushed, only after its
   delivery callback reported success, so a killed producer leaves its acks;
3. meanwhile: topic churn (create `churn-<round>`, produce a few acked
   records, delete the previous churn topic), a DeleteRecords on
   `crash-b`/0 up to an acknowledged offset (the returned low watermark is
   recorded), and in every other round one producer is killed with SIGKILL
   (a killed client must never damage another producer's data);
4. `kill -9`s the broker at a random moment, then SIGKILLs the producers;
5. restarts the broker and verifies, for every partition ever written:
   - the log start (ListOffsets earliest) equals the highest low watermark
     DeleteRecords returned (lower: deleted records came back; higher:
     acknowledged records vanished);
   - every acknowledged record at or above the log start is at its offset
     with its value, and no value is stored twice;
   - churn topics whose deletion was acknowledged are absent from Metadata,
     and the most recently deleted one, created again, is empty.

The loop stops at the first violation (raising `Violation`, after copying the
work directory, with data/, acks/ and broker.log, to
/tmp/crashloop-failure-<round>). A broker that fails to start is a violation
too; that includes spate's start-up port check refusing the port of the
broker just killed (its connections linger in TIME_WAIT) unless `port_retry`
(`--port-retry`) is given, which counts those refusals and moves to a new port.

    python tests/clients/crash_loop.py --rounds 100 --seconds 3 --spate-bin target/release/spate
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

TOPICS = {"crash-a": 2, "crash-b": 2}
TRIM_PARTITION = ("crash-b", 0)  # the partition DeleteRecords trims
PRODUCERS = 4
RATE = 1500  # records per second per producer, so later rounds still verify quickly
VALUE_PAD = 80


class Violation(Exception):
    """An acknowledged guarantee of the broker was broken."""


class PortRefused(Exception):
    """spate's start-up port check refused a port nothing listens on."""


# ---------------------------------------------------------------- producer process

def produce_main(bootstrap, ack_path, round_no, producer_no, idempotent, linger_ms):
    """Body of one producer process: produce until killed, log each ack."""
    from confluent_kafka import Producer

    config = {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": linger_ms,
              "enable.idempotence": idempotent}
    if not idempotent:
        config["retries"] = 0  # no client retry, so a stored duplicate is the broker's doing
    producer = Producer(config)
    acks = open(ack_path, "a")

    def on_delivery(err, msg):
        if err is None:
            acks.write(f"{msg.topic()} {msg.partition()} {msg.offset()} {msg.value().decode()}\n")
            acks.flush()

    targets = [(t, p) for t, n in sorted(TOPICS.items()) for p in range(n)]
    start = time.time()
    seq = 0
    while True:
        topic, partition = targets[seq % len(targets)]
        value = f"r{round_no}-p{producer_no}-s{seq}".ljust(VALUE_PAD, ".")
        try:
            producer.produce(topic, value=value.encode(), partition=partition, on_delivery=on_delivery)
            seq += 1
        except BufferError:
            pass
        producer.poll(0)
        ahead = seq / RATE - (time.time() - start)
        if ahead > 0:
            producer.poll(min(ahead, 0.05))


# ---------------------------------------------------------------- broker control

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """The spate process of one round; data dir and port stay across rounds."""

    def __init__(self, spate_bin, data_dir, port, log_path, port_retry=False):
        self.spate_bin, self.data_dir, self.port, self.log_path = spate_bin, data_dir, port, log_path
        self.addr = f"127.0.0.1:{port}"
        self.proc = None
        self.port_retry = port_retry
        self.port_refusals = []  # rounds whose restart the port check refused

    def start(self, round_no):
        """Starts spate on our port. With `port_retry`, a start refused by the
        port check (``already served by another process``) although our
        previous broker is dead and reaped is counted in `port_refusals` and retried on a new port;
        without it, that refusal is a Violation like any failed start."""
        try:
            self._start_on(round_no)
        except PortRefused as e:
            self.port_refusals.append(round_no)
            if not self.port_retry:
                raise Violation(f"broker refused to start: {e}") from None
            self.port = free_port()
            self.addr = f"127.0.0.1:{self.port}"
            self._start_on(round_no)

    def _start_on(self, round_no):
        cmd = [str(self.spate_bin), "serve", "--listen", self.addr, "--data-dir", str(self.data_dir),
               "--shards", "2", "--set", "pin_shards=false", "--set", "segment_bytes=65536", "--set", "admin_listen=127.0.0.1:0",
               "--set", "auto_create_topics=false"]
        log = open(self.log_path, "a")
        log.write(f"\n===== round {round_no}: start on {self.addr} =====\n")
        log.flush()
        offset = log.tell()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                with open(self.log_path) as f:
                    f.seek(offset)
                    first = f.readline().strip()
                if "already served by another process" in first:  # our previous broker is reaped
                    raise PortRefused(first)
                raise Violation(f"broker exited with {self.proc.returncode} at start: {first}")
            if self.listening() and self.answers():
                if self.proc.poll() is None:
                    return
            time.sleep(0.05)
        raise Violation("broker did not answer Metadata within 60 s")

    def answers(self):
        """Whether Metadata is answered: an accepted connection alone is not
        proof that this round's process serves the port."""
        try:
            admin_client(self.addr).list_topics(timeout=5)
            return True
        except Exception:
            return False

    def listening(self):
        """Whether something accepts connections on our port (a connection
        of a socket to itself, which Linux allows, does not count)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.getsockname() != s.getpeername()
        except OSError:
            return False

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


# ---------------------------------------------------------------- state

class State:
    """What the broker promised so far: acks, low watermarks, churn topics."""

    def __init__(self, workdir):
        self.ack_dir = workdir / "acks"
        self.ack_dir.mkdir(parents=True, exist_ok=True)
        self.low_watermark = defaultdict(int)  # (topic, partition) -> highest returned
        self.unanswered_trim = {}  # (topic, partition) -> offset of a DeleteRecords without answer
        self.churn = {}  # topic -> {"acked": [(partition, offset, value)], "deleted": bool|None}

    def acked(self, pattern="*.acks"):
        """(topic, partition) -> {offset: value}, from the ack files matching `pattern`."""
        out = defaultdict(dict)
        for path in sorted(self.ack_dir.glob(pattern)):
            for line in path.read_text().splitlines():
                parts = line.split(" ")
                if len(parts) != 4:
                    continue  # a producer killed mid-write leaves a partial last line
                topic, partition, offset, value = parts
                tp, offset = (topic, int(partition)), int(offset)
                if out[tp].get(offset, value) != value:
                    raise Violation(f"{tp} offset {offset} acknowledged twice: {out[tp][offset]!r} and {value!r}")
                out[tp][offset] = value
        for topic, info in self.churn.items():
            for partition, offset, value in info["acked"]:
                out[(topic, partition)][offset] = value
        return out


# ---------------------------------------------------------------- admin helpers

def admin_client(addr):
    from confluent_kafka.admin import AdminClient
    return AdminClient({"bootstrap.servers": addr})


# Admin calls of the load phase wait less: the broker is often killed under
# them, and their outcome is then decided by the next verification anyway.
LOAD_TIMEOUT_S = 6


def create_topic(addr, name, partitions, timeout=15):
    from confluent_kafka.admin import NewTopic
    admin = admin_client(addr)  # kept referenced: a collected client cancels its futures
    admin.create_topics([NewTopic(name, num_partitions=partitions)])[name].result(timeout=timeout)


def delete_topic(addr, name, timeout=15):
    admin = admin_client(addr)
    admin.delete_topics([name])[name].result(timeout=timeout)


def topic_names(addr):
    admin = admin_client(addr)
    return set(admin.list_topics(timeout=15).topics)


def delete_records(addr, topic, partition, offset, timeout=15):
    """DeleteRecords before `offset`; returns the low watermark the broker answered."""
    from confluent_kafka import TopicPartition
    tp = TopicPartition(topic, partition, offset)
    admin = admin_client(addr)
    result = admin.delete_records([tp], request_timeout=timeout)
    return next(iter(result.values())).result(timeout=timeout).low_watermark


def produce_few(addr, topic, count, tag):
    """Produce `count` records synchronously; returns the acknowledged ones."""
    from confluent_kafka import Producer
    acked = []
    producer = Producer({"bootstrap.servers": addr, "acks": "all", "enable.idempotence": True,
                         "message.timeout.ms": 10000})
    for i in range(count):
        producer.produce(topic, value=f"{tag}-{i}".encode(), partition=0,
                         on_delivery=lambda err, msg: err is None and acked.append(
                             (msg.partition(), msg.offset(), msg.value().decode())))
    producer.flush(12)
    return acked


# ---------------------------------------------------------------- one round

def start_producers(addr, state, round_no, workdir):
    procs = []
    for n in range(PRODUCERS):
        ack_path = state.ack_dir / f"r{round_no:04d}-p{n}.acks"
        idempotent = n % 2 == 0
        linger = random.choice([0, 1, 2, 5])
        cmd = [sys.executable, __file__, "--produce", addr, str(ack_path), str(round_no), str(n),
               "1" if idempotent else "0", str(linger)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                      stderr=open(workdir / "producers.log", "a")))
    return procs


def churn(addr, state, round_no, notes):
    """Create churn-<round>, produce to it, delete the previous churn topic."""
    name = f"churn-{round_no}"
    try:
        create_topic(addr, name, 1, timeout=LOAD_TIMEOUT_S)
        state.churn[name] = {"acked": [], "deleted": False}
        state.churn[name]["acked"] = produce_few(addr, name, 5, f"{name}-v")
    except Exception as e:  # the broker may be killed meanwhile: outcome unknown
        state.churn.setdefault(name, {"acked": [], "deleted": None})
        notes.append(f"churn create/produce of {name}: {e!r}")
        return
    for old, info in state.churn.items():
        if old != name and info["deleted"] is False:
            info["deleted"] = None  # in flight: decided by the next verification
            try:
                delete_topic(addr, old, timeout=LOAD_TIMEOUT_S)
                info["deleted"] = True
            except Exception as e:
                notes.append(f"churn delete {old}: {e!r}")
            break


def trim(addr, state, round_no, notes):
    """DeleteRecords on the trim partition up to an offset acknowledged this round."""
    offsets = sorted(state.acked(f"r{round_no:04d}-*.acks").get(TRIM_PARTITION, {}))
    floor = state.low_watermark[TRIM_PARTITION]
    candidates = [o for o in offsets if o > floor]
    if not candidates:
        return
    target = candidates[len(candidates) // 2]
    try:
        low = delete_records(addr, *TRIM_PARTITION, target, timeout=LOAD_TIMEOUT_S)
    except Exception as e:  # e.g. the broker was killed: it may or may not have applied it
        state.unanswered_trim[TRIM_PARTITION] = target
        notes.append(f"DeleteRecords to {target} unanswered: {e!r}")
        return
    if low < target:
        raise Violation(f"DeleteRecords before {target} answered low watermark {low}")
    state.low_watermark[TRIM_PARTITION] = max(floor, low)


def load_phase(broker, state, round_no, seconds, workdir):
    """Producers, churn, trim, a producer SIGKILL; then kill -9 the broker."""
    notes = []
    procs = start_producers(broker.addr, state, round_no, workdir)
    churn_at, trim_at = seconds * 0.15, seconds * 0.35
    # Most rounds kill under plain load; every fourth kills in the middle of
    # the churn (CreateTopics, produce, DeleteTopics), every fourth in the
    # middle of the DeleteRecords.
    if round_no % 4 == 2:
        kill_at = churn_at + random.uniform(0.0, 0.08)
    elif round_no % 4 == 3:
        kill_at = trim_at + random.uniform(0.0, 0.03)
    else:
        kill_at = random.uniform(0.4, 1.0) * seconds
    notes.append(f"kill -9 at {kill_at:.2f} s (churn at {churn_at:.2f} s, trim at {trim_at:.2f} s)")
    killer = threading.Timer(kill_at, broker.kill)
    start = time.time()
    killer.start()
    time.sleep(churn_at)
    churn(broker.addr, state, round_no, notes)
    if round_no % 2 == 1 and broker.alive():
        victim = random.choice(procs)
        victim.send_signal(signal.SIGKILL)
        notes.append(f"SIGKILLed producer pid {victim.pid}")
    time.sleep(max(0.0, trim_at - (time.time() - start)))
    trim(broker.addr, state, round_no, notes)
    killer.join()
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
    return notes


# ---------------------------------------------------------------- verification

def read_partition(addr, topic, partition, start, end):
    """offset -> value for [start, end) read with a confluent-kafka consumer."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition
    consumer = Consumer({"bootstrap.servers": addr, "group.id": "crash-loop-verify",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "fetch.max.bytes": 16 << 20})
    consumer.assign([TopicPartition(topic, partition, start)])
    got = {}
    idle_deadline = time.time() + 30
    next_offset = start
    while next_offset < end and time.time() < idle_deadline:
        for msg in consumer.consume(num_messages=20000, timeout=0.5):
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    raise Violation(f"{topic}/{partition}: consumer error {msg.error()}")
                continue
            got[msg.offset()] = msg.value().decode()
            next_offset = msg.offset() + 1
            idle_deadline = time.time() + 30
    consumer.close()
    if next_offset < end:
        raise Violation(f"{topic}/{partition}: read stalled at offset {next_offset}, high watermark {end}")
    return got


def watermarks(addr, topic, partition):
    from confluent_kafka import Consumer, TopicPartition
    consumer = Consumer({"bootstrap.servers": addr, "group.id": "crash-loop-verify"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)
    finally:
        consumer.close()


def verify_partition(addr, tp, acked, expected_start, unanswered=None):
    """Checks one partition; returns (acked records verified, log start).
    `unanswered`: the offset of a DeleteRecords whose answer was lost, which
    the log start may equal."""
    low, high = watermarks(addr, *tp)
    if low == unanswered and low > expected_start:
        expected_start = low  # that DeleteRecords was applied before the kill
    if low < expected_start:
        raise Violation(f"{tp}: log start {low} moved back below low watermark {expected_start}")
    if low > expected_start:
        lost = [o for o in acked if expected_start <= o < low]
        raise Violation(f"{tp}: log start {low} above last low watermark {expected_start}; "
                        f"{len(lost)} acknowledged records below it lost")
    got = read_partition(addr, *tp, low, high)
    seen = {}
    for offset, value in got.items():
        if value in seen:
            raise Violation(f"{tp}: value {value!r} stored twice, at offsets {seen[value]} and {offset}")
        seen[value] = offset
    verified = 0
    missing = []
    for offset, value in sorted(acked.items()):
        if offset < low:
            continue  # removed by DeleteRecords, legitimately
        if got.get(offset) != value:
            missing.append((offset, value, got.get(offset), seen.get(value)))
        verified += 1
    if missing:
        o, v, there, elsewhere = missing[0]
        raise Violation(f"{tp}: {len(missing)} acknowledged records missing or moved (high watermark {high}); "
                        f"first: offset {o} acked {v!r}, found {there!r} there, value at offset {elsewhere}")
    return verified, low


def verify_churn(addr, state):
    """Deleted churn topics stay deleted; a recreated one starts empty."""
    names = topic_names(addr)
    for topic, info in state.churn.items():
        if info["deleted"] is None:
            info["deleted"] = topic not in names
        if info["deleted"] and topic in names:
            raise Violation(f"deleted topic {topic} is back in Metadata")
    deleted = [t for t, i in state.churn.items() if i["deleted"]]
    if not deleted:
        return
    topic = deleted[-1]
    create_topic(addr, topic, 1)
    low, high = watermarks(addr, topic, 0)
    if (low, high) != (0, 0):
        raise Violation(f"recreated topic {topic} is not empty: watermarks {low}..{high}")
    delete_topic(addr, topic)


def verify(addr, state):
    """Every check of one round; returns records verified."""
    verify_churn(addr, state)
    verified = 0
    live = {t for t, i in state.churn.items() if not i["deleted"]}
    for tp, acked in state.acked().items():
        if tp[0].startswith("churn-") and tp[0] not in live:
            continue
        count, low = verify_partition(addr, tp, acked, state.low_watermark[tp], state.unanswered_trim.pop(tp, None))
        state.low_watermark[tp] = max(state.low_watermark[tp], low)
        verified += count
    return verified


# ---------------------------------------------------------------- driver

def preserve_failure(workdir, round_no):
    dest = Path(f"/tmp/crashloop-failure-{round_no}")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(workdir, dest, ignore_dangling_symlinks=True)
    return dest


def run(rounds, seconds_per_round, spate_bin, workdir, seed=None, port_retry=False, log=print):
    """Runs the crash loop; returns the acknowledged records verified after
    the last restart (every ack of every round at or above its log start).

    Raises Violation at the first broken guarantee (workdir copied to
    /tmp/crashloop-failure-<round>). `port_retry`: see Broker.start."""
    seed = seed if seed is not None else random.randrange(1 << 30)
    random.seed(seed)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    state = State(workdir)
    broker = Broker(spate_bin, workdir / "data", free_port(), workdir / "broker.log", port_retry)
    log(f"crash loop: seed {seed}, workdir {workdir}, broker {spate_bin}")
    verified = checks = 0
    round_no = 0
    try:
        broker.start(0)
        for topic, partitions in TOPICS.items():
            create_topic(broker.addr, topic, partitions)
        for round_no in range(1, rounds + 1):
            started = time.time()
            notes = load_phase(broker, state, round_no, seconds_per_round, workdir)
            refusals = len(broker.port_refusals)
            broker.start(round_no)
            if len(broker.port_refusals) > refusals:
                notes.append(f"port check refused the old port, restarted on {broker.addr}")
            verified = verify(broker.addr, state)
            checks += verified
            acked_now = sum(len(v) for v in state.acked().values())
            deleted = sum(1 for i in state.churn.values() if i["deleted"])
            log(f"round {round_no}: {acked_now} acked in total, {verified} verified, "
                f"low watermark {state.low_watermark[TRIM_PARTITION]}, {deleted} churn topics deleted, "
                f"{time.time() - started:.1f} s"
                + (f" [{'; '.join(notes)}]" if notes else ""))
    except Violation as e:
        broker.kill()
        dest = preserve_failure(workdir, round_no)
        raise Violation(f"round {round_no}: {e} (workdir with data/ and broker.log copied to {dest})") from None
    finally:
        broker.kill()
    if broker.port_refusals:
        log(f"crash loop: the port check refused a free port at {len(broker.port_refusals)} restarts "
            f"(rounds {broker.port_refusals[:10]}...)")
    log(f"crash loop: {rounds} rounds, {verified} acknowledged records verified "
        f"({checks} record checks over all rounds), 0 lost")
    return verified


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--produce":
        addr, ack_path, round_no, producer_no, idempotent, linger = sys.argv[2:8]
        produce_main(addr, ack_path, int(round_no), int(producer_no), idempotent == "1", int(linger))
        return
    root = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of load per round")
    parser.add_argument("--spate-bin", default=os.environ.get("SPATE_BIN", root / "target/release/spate"))
    parser.add_argument("--workdir", default=None,
                        help="default: a new /tmp/spate-crashloop-* dir, removed if the loop passes")
    parser.add_argument("--seed", type=int, default=None, help="for the random choices (timing still varies)")
    parser.add_argument("--port-retry", action="store_true",
                        help="when spate's start-up port check refuses the port of our killed (reaped) "
                             "broker, count it and restart on a new port instead of failing")
    args = parser.parse_args()
    import tempfile
    workdir = args.workdir or tempfile.mkdtemp(prefix="spate-crashloop-")
    try:
        run(args.rounds, args.seconds, args.spate_bin, workdir, seed=args.seed, port_retry=args.port_retry,
            log=lambda line: print(line, flush=True))
    except Violation as e:
        print(f"VIOLATION: {e}", flush=True)
        sys.exit(1)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)  # passed: nothing to inspect


if __name__ == "__main__":
    main()
