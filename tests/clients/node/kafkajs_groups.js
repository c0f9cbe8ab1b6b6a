// kafkajs 2.2 consumer groups against spate (run by test_kafkajs.py with the
// broker address): consumer.run() members of one group.
//
// 1. 300 keyed messages on a 6-partition topic; three members join and split
//    the partitions (disjoint, covering all 6) and read them, committing each
//    message (commitOffsets, autoCommit off);
// 2. admin.describeGroups shows the group Stable with the three members and
//    their assignments; admin.listGroups lists it;
// 3. one member disconnects (LeaveGroup); the other two take its partitions;
//    300 more messages are read by them;
// 4. every message was read exactly once; the committed offsets
//    (admin.fetchOffsets) are the log ends; a fresh member of the group reads
//    nothing; deleting the then empty group (admin.deleteGroups) removes its
//    offsets and its listing.
const { Kafka, logLevel, AssignerProtocol } = require('kafkajs');
const assert = require('assert');

const broker = process.argv[2];
const TOPIC = 'kafkajs-groups';
const GROUP = 'kafkajs-group';
const PARTITIONS = 6;
const HALF = 300;
const ALL = [...Array(PARTITIONS).keys()];

// logLevel NOTHING: kafkajs logs every rebalance at ERROR level; failures are
// thrown (and crashes recorded) instead.
const kafka = new Kafka({ clientId: 'spate-groups', brokers: [broker], logLevel: logLevel.NOTHING });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const seen = new Map(); // "partition:offset" -> names of the members that read it
const commitErrors = [];

function readCount() {
  return seen.size;
}

async function waitFor(what, ms, cond, detail = () => '') {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}; ${detail()}`);
    await sleep(50);
  }
}

// Every member holds partitions and together they hold each exactly once.
function settled(members) {
  const all = members.map((m) => m.assignment || []);
  const flat = all.flat().sort((a, b) => a - b);
  return all.every((a) => a.length > 0) && JSON.stringify(flat) === JSON.stringify(ALL);
}

async function startMember(name) {
  const consumer = kafka.consumer({
    groupId: GROUP,
    sessionTimeout: 6000,
    heartbeatInterval: 500,
    rebalanceTimeout: 20000,
    maxWaitTimeInMs: 100,
  });
  const m = { name, consumer, assignment: null, memberId: null, read: [], crash: null };
  consumer.on(consumer.events.GROUP_JOIN, (e) => {
    m.assignment = [...(e.payload.memberAssignment[TOPIC] || [])].sort((a, b) => a - b);
    m.memberId = e.payload.memberId;
  });
  consumer.on(consumer.events.CRASH, (e) => {
    m.crash = e.payload.error;
  });
  await consumer.connect();
  await consumer.subscribe({ topics: [TOPIC], fromBeginning: true });
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ topic, partition, message }) => {
      const key = `${partition}:${message.offset}`;
      if (!seen.has(key)) seen.set(key, []);
      seen.get(key).push(name);
      m.read.push([partition, Number(message.offset), message.value.toString()]);
      try {
        await consumer.commitOffsets([{ topic, partition, offset: (BigInt(message.offset) + 1n).toString() }]);
      } catch (e) {
        commitErrors.push(`${name} ${key}: ${e.type || ''} ${e.message}`);
        throw e;
      }
    },
  });
  return m;
}

function describe(members) {
  return () =>
    JSON.stringify({
      assignments: Object.fromEntries(members.map((m) => [m.name, m.assignment])),
      read: readCount(),
      crashes: members.filter((m) => m.crash).map((m) => `${m.name}: ${m.crash}`),
      commitErrors: commitErrors.slice(0, 5),
    });
}

async function produce(producer, prefix) {
  const messages = [];
  for (let i = 0; i < HALF; i++) messages.push({ key: `key-${i % 53}`, value: `${prefix}-${i}` });
  await producer.send({ topic: TOPIC, acks: -1, messages });
}

async function main() {
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic: TOPIC, numPartitions: PARTITIONS }] });
  const producer = kafka.producer();
  await producer.connect();
  await produce(producer, 'a');

  // 1. three members split the partitions and read the first half
  const members = await Promise.all(['A', 'B', 'C'].map(startMember));
  const [a, b, c] = members;
  await waitFor('three members share the partitions and read the first half', 40000,
    () => settled(members) && readCount() >= HALF, describe(members));

  // 2. the group as the admin API sees it
  const { groups: [group] } = await admin.describeGroups([GROUP]);
  assert.strictEqual(group.groupId, GROUP);
  assert.strictEqual(group.state, 'Stable');
  assert.strictEqual(group.protocolType, 'consumer');
  assert.strictEqual(group.protocol, 'RoundRobinAssigner');
  assert.deepStrictEqual(group.members.map((x) => x.memberId).sort(), members.map((m) => m.memberId).sort());
  for (const described of group.members) {
    const m = members.find((x) => x.memberId === described.memberId);
    const { assignment } = AssignerProtocol.MemberAssignment.decode(described.memberAssignment);
    assert.deepStrictEqual([...assignment[TOPIC]].sort((x, y) => x - y), m.assignment, `${m.name}'s described assignment`);
    assert.strictEqual(described.clientId, 'spate-groups');
  }
  const listed = (await admin.listGroups()).groups;
  assert.ok(listed.some((g) => g.groupId === GROUP && g.protocolType === 'consumer'), JSON.stringify(listed));

  // 3. C leaves; A and B take its partitions and read the second half
  const cPartitions = c.assignment;
  const cRead = c.read.length;
  assert.ok(cRead > 0, 'C read messages before it left');
  await c.consumer.disconnect();
  await waitFor("A and B take C's partitions", 30000, () => settled([a, b]), describe(members));
  await produce(producer, 'b');
  await producer.disconnect();
  await waitFor('every message read', 40000, () => readCount() >= 2 * HALF, describe(members));
  await sleep(1000); // a message read twice would show up here
  await Promise.all([a.consumer.disconnect(), b.consumer.disconnect()]);
  assert.strictEqual(c.read.length, cRead, 'C read nothing after it left');
  assert.deepStrictEqual(members.filter((m) => m.crash).map((m) => `${m.name}: ${m.crash}`), []);
  assert.deepStrictEqual(commitErrors, []);

  // 4. exactly once, committed offsets at the log ends, nothing left, delete
  const ends = await admin.fetchTopicOffsets(TOPIC);
  const expected = new Set();
  for (const { partition, low, high } of ends) {
    for (let o = Number(low); o < Number(high); o++) expected.add(`${partition}:${o}`);
  }
  assert.strictEqual(expected.size, 2 * HALF);
  const dups = [...seen].filter(([, who]) => who.length > 1).map(([k, who]) => `${k} by ${who}`);
  const missing = [...expected].filter((k) => !seen.has(k));
  const unknown = [...seen.keys()].filter((k) => !expected.has(k));
  assert.deepStrictEqual({ dups: dups.slice(0, 10), missing: missing.slice(0, 10), unknown: unknown.slice(0, 10) },
    { dups: [], missing: [], unknown: [] }, 'every message read exactly once');
  const tookOver = [...a.read, ...b.read].filter(([p, , v]) => cPartitions.includes(p) && v.startsWith('b-'));
  assert.ok(tookOver.length > 0, "A and B read C's partitions after it left");

  const committedOffsets = async () => {
    const [{ partitions }] = await admin.fetchOffsets({ groupId: GROUP, topics: [TOPIC] });
    return Object.fromEntries(partitions.map(({ partition, offset }) => [partition, offset]));
  };
  const endOffsets = Object.fromEntries(ends.map(({ partition, high }) => [partition, high]));
  assert.deepStrictEqual(await committedOffsets(), endOffsets, 'committed offsets are the log ends');

  const fresh = await startMember('fresh');
  await waitFor('the fresh member is assigned every partition', 30000, () => settled([fresh]), describe([fresh]));
  await sleep(2500);
  await fresh.consumer.disconnect();
  assert.deepStrictEqual(fresh.read, [], 'a fresh member finds nothing left to read');

  const { groups: [left] } = await admin.describeGroups([GROUP]);
  assert.deepStrictEqual({ state: left.state, members: left.members.map((x) => x.memberId) },
    { state: 'Empty', members: [] }, 'every member left: the group is Empty');
  const [deleted] = await admin.deleteGroups([GROUP]);
  assert.strictEqual(deleted.errorCode, 0);
  assert.deepStrictEqual(await committedOffsets(), Object.fromEntries(ALL.map((p) => [p, '-1'])),
    'offsets of a deleted group are gone');
  assert.ok(!(await admin.listGroups()).groups.some((g) => g.groupId === GROUP), 'a deleted group is not listed');
  await admin.disconnect();
  console.log('kafkajs groups ok');
}

const timer = setTimeout(() => {
  console.error('kafkajs groups: timed out after 110 s');
  process.exit(2);
}, 110000);

main()
  .then(() => {
    clearTimeout(timer);
    process.exit(0);
  })
  .catch((e) => {
    console.error(e);
    process.exit(1);
  });
