"""aiokafka (asyncio, ApiVersions v0, Produce 7, Fetch 11): produce and consume."""

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


def test_produce_and_consume(broker):
    async def run():
        producer = AIOKafkaProducer(bootstrap_servers=broker.addr, acks="all", compression_type="gzip")
        await producer.start()
        try:
            sends = [await producer.send("aio-basic", key=b"k%d" % (i % 5), value=b"v%d" % i, partition=0)
                     for i in range(2000)]
            offsets = [(await s).offset for s in sends]
        finally:
            await producer.stop()
        assert offsets == list(range(2000))

        consumer = AIOKafkaConsumer(bootstrap_servers=broker.addr, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            tp = TopicPartition("aio-basic", 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            got = []
            while len(got) < 2000:
                batch = await consumer.getmany(tp, timeout_ms=2000)
                assert batch, "consumer stalled"
                got.extend(batch[tp])
        finally:
            await consumer.stop()
        assert [m.offset for m in got] == list(range(2000))
        assert [m.value for m in got] == [b"v%d" % i for i in range(2000)]

    asyncio.run(run())
