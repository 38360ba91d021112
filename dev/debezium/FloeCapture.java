/*
 * floe dev stack: dumps every record of some topics as JSON lines, raw bytes included, and
 * decodes Confluent-framed Avro keys and values with the real AvroConverter (fixtures,
 * dev/avro-fixtures.sh).
 *
 * Usage: java -cp "classes:libs/*" FloeCapture --brokers HOST:PORT --topics REGEX --out FILE
 *            [--registry URL] [--since-ms EPOCH_MS] [--idle-ms 5000] [--max-ms 120000]
 *
 * Reads the partitions of every topic whose whole name matches REGEX from the beginning (no
 * consumer group: tansu's high watermarks are wrong, so it reads until nothing came for
 * --idle-ms, at most --max-ms), keeps the records whose timestamp is >= --since-ms, and writes
 * one line per record, ordered by topic, partition, offset:
 *   {"topic", "partition", "offset", "timestamp", "key_b64", "value_b64" (null: null),
 *    "headers": [[name, base64 or null], ...],
 *    "key_schema_id", "value_schema_id"   (Confluent framing: magic byte 0 + 4-byte id; else null),
 *    "key", "value"                       (decoded: the JSON text parsed, or, for Avro, the
 *                                          AvroConverter's Connect data rendered by JsonConverter
 *                                          with schemas.enable=false; null when null)}
 * Avro needs --registry (the converter fetches the writer schemas there).
 */

import java.io.BufferedWriter;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.regex.Pattern;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.connect.data.SchemaAndValue;
import org.apache.kafka.connect.json.JsonConverter;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;

import io.confluent.connect.avro.AvroConverter;

public final class FloeCapture {

    private static final ObjectMapper JSON = new ObjectMapper();

    private FloeCapture() {
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> opt = new HashMap<>();
        for (int i = 0; i + 1 < args.length; i += 2) {
            if (!args[i].startsWith("--")) {
                usage();
            }
            opt.put(args[i].substring(2), args[i + 1]);
        }
        if (args.length % 2 != 0 || !opt.containsKey("brokers") || !opt.containsKey("topics") || !opt.containsKey("out")) {
            usage();
        }
        Pattern topics = Pattern.compile(opt.get("topics"));
        long since = Long.parseLong(opt.getOrDefault("since-ms", "0"));
        long idleMs = Long.parseLong(opt.getOrDefault("idle-ms", "5000"));
        long maxMs = Long.parseLong(opt.getOrDefault("max-ms", "120000"));
        String registry = opt.get("registry");

        AvroConverter keyAvro = null;
        AvroConverter valueAvro = null;
        if (registry != null) {
            keyAvro = new AvroConverter();
            keyAvro.configure(Map.of("schema.registry.url", registry), true);
            valueAvro = new AvroConverter();
            valueAvro.configure(Map.of("schema.registry.url", registry), false);
        }
        JsonConverter render = new JsonConverter();
        render.configure(Map.of("schemas.enable", "false", "converter.type", "value"), false);

        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, opt.get("brokers"));
        props.put(ConsumerConfig.CLIENT_ID_CONFIG, "floe-capture");
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());

        List<ConsumerRecord<byte[], byte[]>> records = new ArrayList<>();
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
            List<TopicPartition> assigned = new ArrayList<>();
            for (Map.Entry<String, List<PartitionInfo>> t : consumer.listTopics(Duration.ofSeconds(30)).entrySet()) {
                if (topics.matcher(t.getKey()).matches()) {
                    for (PartitionInfo p : t.getValue()) {
                        assigned.add(new TopicPartition(p.topic(), p.partition()));
                    }
                }
            }
            if (assigned.isEmpty()) {
                System.err.println("FloeCapture: no topic matches " + topics);
                System.exit(1);
            }
            consumer.assign(assigned);
            consumer.seekToBeginning(assigned);
            long start = System.currentTimeMillis();
            long last = start;
            while (System.currentTimeMillis() - last < idleMs && System.currentTimeMillis() - start < maxMs) {
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(200))) {
                    last = System.currentTimeMillis();
                    if (r.timestamp() >= since) {
                        records.add(r);
                    }
                }
            }
        }
        records.sort(Comparator.<ConsumerRecord<byte[], byte[]>, String>comparing(ConsumerRecord::topic)
                .thenComparingInt(ConsumerRecord::partition)
                .thenComparingLong(ConsumerRecord::offset));

        Base64.Encoder b64 = Base64.getEncoder();
        try (BufferedWriter out = Files.newBufferedWriter(Path.of(opt.get("out")), StandardCharsets.UTF_8)) {
            for (ConsumerRecord<byte[], byte[]> r : records) {
                ObjectNode line = JSON.createObjectNode();
                line.put("topic", r.topic());
                line.put("partition", r.partition());
                line.put("offset", r.offset());
                line.put("timestamp", r.timestamp());
                line.put("key_b64", r.key() == null ? null : b64.encodeToString(r.key()));
                line.put("value_b64", r.value() == null ? null : b64.encodeToString(r.value()));
                ArrayNode headers = line.putArray("headers");
                for (Header h : r.headers()) {
                    headers.addArray().add(h.key()).add(h.value() == null ? null : b64.encodeToString(h.value()));
                }
                line.set("key_schema_id", JSON.valueToTree(schemaId(r.key())));
                line.set("value_schema_id", JSON.valueToTree(schemaId(r.value())));
                line.set("key", decode(r.topic(), r.key(), keyAvro, render));
                line.set("value", decode(r.topic(), r.value(), valueAvro, render));
                out.write(JSON.writeValueAsString(line));
                out.newLine();
            }
        }
        System.err.println("FloeCapture: " + records.size() + " records written to " + opt.get("out"));
    }

    /** The schema id of Confluent's framing (magic byte 0, 4-byte big-endian id), else null. */
    private static Integer schemaId(byte[] b) {
        if (b == null || b.length < 5 || b[0] != 0) {
            return null;
        }
        return ((b[1] & 0xff) << 24) | ((b[2] & 0xff) << 16) | ((b[3] & 0xff) << 8) | (b[4] & 0xff);
    }

    private static JsonNode decode(String topic, byte[] b, AvroConverter avro, JsonConverter render) throws IOException {
        if (b == null) {
            return null;
        }
        if (schemaId(b) != null) {
            if (avro == null) {
                throw new IllegalStateException("an Avro record on " + topic + " but no --registry");
            }
            SchemaAndValue sv = avro.toConnectData(topic, b);
            byte[] json = render.fromConnectData(topic, sv.schema(), sv.value());
            return json == null ? null : JSON.readTree(json);
        }
        return JSON.readTree(b);
    }

    private static void usage() {
        System.err.println("usage: FloeCapture --brokers HOST:PORT --topics REGEX --out FILE [--registry URL]"
                + " [--since-ms EPOCH_MS] [--idle-ms MS] [--max-ms MS]");
        System.exit(2);
    }
}
