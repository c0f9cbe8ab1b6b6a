// kafkajs 2.2 against spate: admin (create topic, metadata), an idempotent
// producer (InitProducerId to the controller), and offsets read back.
// Data is checked with ListOffsets here; kafkajs consumes only through a
// consumer group (it has no assign()): kafkajs_groups.js covers that.
const { Kafka, logLevel } = require('kafkajs');
const assert = require('assert');

async function main() {
  const broker = process.argv[2];
  const kafka = new Kafka({ clientId: 'spate-test', brokers: [broker], logLevel: logLevel.NOTHING });
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic: 'kafkajs-basic', numPartitions: 3 }] });
  const meta = await admin.fetchTopicMetadata({ topics: ['kafkajs-basic'] });
  assert.strictEqual(meta.topics[0].partitions.length, 3);

  const producer = kafka.producer({ idempotent: true });
  await producer.connect();
  for (let b = 0; b < 10; b++) {
    const messages = [];
    for (let i = 0; i < 100; i++) messages.push({ key: `k${i}`, value: `v${b * 100 + i}`, partition: 1 });
    const [result] = await producer.send({ topic: 'kafkajs-basic', acks: -1, messages });
    assert.strictEqual(Number(result.baseOffset), b * 100);
  }
  await producer.disconnect();

  const offsets = await admin.fetchTopicOffsets('kafkajs-basic');
  const p1 = offsets.find((o) => o.partition === 1);
  assert.strictEqual(p1.high, '1000');
  assert.strictEqual(p1.low, '0');
  await admin.deleteTopics({ topics: ['kafkajs-basic'] });
  assert.ok(!(await admin.listTopics()).includes('kafkajs-basic'));
  await admin.disconnect();
  console.log('kafkajs ok');
}

main().catch((e) => { console.error(e); process.exit(1); });
