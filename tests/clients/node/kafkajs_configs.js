// Prints, as JSON, kafkajs' describeConfigs of a topic and of broker 0:
// {topic: {name: [value, source]}, broker: {name: [value, source, readOnly]}}.
const { Kafka, ConfigResourceTypes, logLevel } = require('kafkajs')

async function main () {
  const [broker, topic] = process.argv.slice(2)
  const kafka = new Kafka({ clientId: 'spate-configs', brokers: [broker], logLevel: logLevel.NOTHING })
  const admin = kafka.admin()
  await admin.connect()
  try {
    const described = await admin.describeConfigs({
      includeSynonyms: false,
      resources: [
        { type: ConfigResourceTypes.TOPIC, name: topic },
        { type: ConfigResourceTypes.BROKER, name: '0' }
      ]
    })
    const out = {}
    for (const r of described.resources) {
      if (r.errorCode !== 0) throw new Error(`describe ${r.resourceName}: ${r.errorCode} ${r.errorMessage}`)
      const key = r.resourceType === ConfigResourceTypes.TOPIC ? 'topic' : 'broker'
      out[key] = {}
      for (const e of r.configEntries) out[key][e.configName] = [e.configValue, e.configSource, e.readOnly]
    }
    console.log(JSON.stringify(out))
  } finally {
    await admin.disconnect()
  }
}

main().catch(e => { console.error(e); process.exit(1) })
