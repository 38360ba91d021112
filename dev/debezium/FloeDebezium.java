/*
 * floe dev stack: the real Debezium 3.6.3 embedded engine (PostgreSQL connector),
 * forwarding every change event to a Kafka-protocol broker (tansu in the dev stack).
 *
 * Usage: java -cp "classes:libs/*" FloeDebezium <settings.properties>
 *
 * The properties file (written by dev/stack.sh) holds:
 *   floe.producer.<name>=...   KafkaProducer settings (prefix stripped); bootstrap.servers is required
 *   floe.report.interval.ms    how often to log the number of records forwarded (default 10000, 0: never)
 *   floe.format                json (default) or avro: how keys and values are serialised
 *   anything else              Debezium engine / connector / converter settings, passed as is
 *
 * floe.format=json: keys and values are serialised by Kafka Connect's JsonConverter exactly
 * as a Kafka Connect worker would (DebeziumEngine with
 * KeyValueHeaderChangeEventFormat.of(Json, Json, Json)) and sent as their UTF-8 bytes.
 * floe.format=avro: by Confluent's io.confluent.connect.avro.AvroConverter
 * (KeyValueHeaderChangeEventFormat.of(Avro, Avro, Json); the engine's default converter class
 * for Avro), which registers each schema under the subject <topic>-key / <topic>-value
 * (auto.register.schemas=true) and writes the Confluent wire format (magic byte 0, 4-byte
 * schema id, Avro binary). It needs the registry's address: converter.schema.registry.url
 * (key and value), or key.converter.schema.registry.url and value.converter.schema.registry.url;
 * the engine passes every converter.* and key.converter.* / value.converter.* setting to the
 * converter, prefix stripped (e.g. converter.basic.auth.credentials.source=USER_INFO,
 * converter.basic.auth.user.info=user:password).
 * In both formats a null key or value stays null (tombstones, truncate events) and headers
 * are forwarded (header.converter.class decides their encoding). The producer uses Kafka's
 * default partitioner (murmur2 of the key bytes), so every key lands on the partition Kafka
 * Connect would pick.
 * An offset is marked processed only after the broker acknowledged the record (acks=all,
 * idempotent producer); a send failure stops the engine and the process exits with status 1.
 * SIGTERM closes the engine (which drops the replication slot when slot.drop.on.stop=true)
 * and then the producer.
 */

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import io.debezium.DebeziumException;
import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.Header;
import io.debezium.engine.format.Avro;
import io.debezium.engine.format.Json;
import io.debezium.engine.format.KeyValueHeaderChangeEventFormat;

public final class FloeDebezium {

    private static final Logger LOG = LoggerFactory.getLogger(FloeDebezium.class);
    private static final String PRODUCER_PREFIX = "floe.producer.";
    private static final String REPORT_INTERVAL = "floe.report.interval.ms";
    private static final String FORMAT = "floe.format";
    private static final String REGISTRY_URL = "schema.registry.url";

    private FloeDebezium() {
    }

    /**
     * Sends each batch to Kafka, waits for every ack, and only then commits the offsets.
     * K and V are String (JSON) or byte[] (Avro).
     */
    static final class Forwarder<K, V> implements DebeziumEngine.ChangeConsumer<ChangeEvent<K, V>> {
        private final KafkaProducer<byte[], byte[]> producer;
        private final AtomicLong forwarded = new AtomicLong();
        private final AtomicLong nullValues = new AtomicLong();
        private long reported;

        Forwarder(KafkaProducer<byte[], byte[]> producer) {
            this.producer = producer;
        }

        @Override
        public void handleBatch(List<ChangeEvent<K, V>> records,
                                DebeziumEngine.RecordCommitter<ChangeEvent<K, V>> committer)
                throws InterruptedException {
            List<Future<RecordMetadata>> acks = new ArrayList<>(records.size());
            for (ChangeEvent<K, V> record : records) {
                acks.add(producer.send(toProducerRecord(record)));
            }
            producer.flush();
            for (int i = 0; i < acks.size(); i++) {
                try {
                    acks.get(i).get();
                }
                catch (ExecutionException e) {
                    throw new DebeziumException("sending a record to topic '" + records.get(i).destination()
                            + "' failed; its offset is not committed", e.getCause());
                }
            }
            for (ChangeEvent<K, V> record : records) {
                if (record.value() == null) {
                    nullValues.incrementAndGet();
                }
                committer.markProcessed(record);
            }
            committer.markBatchFinished();
            forwarded.addAndGet(records.size());
        }

        long forwarded() {
            return forwarded.get();
        }

        /** Logs the running totals when they changed since the last report. */
        synchronized void report() {
            long n = forwarded.get();
            if (n != reported) {
                LOG.info("forwarded {} records (+{}), {} with a null value", n, n - reported, nullValues.get());
                reported = n;
            }
        }

        private static ProducerRecord<byte[], byte[]> toProducerRecord(ChangeEvent<?, ?> record) {
            RecordHeaders headers = new RecordHeaders();
            List<Header<Object>> eventHeaders = record.headers();
            if (eventHeaders != null) {
                for (Header<Object> h : eventHeaders) {
                    headers.add(h.getKey(), headerBytes(h.getValue()));
                }
            }
            return new ProducerRecord<>(record.destination(), record.partition(), bytes(record.key()),
                    bytes(record.value()), headers);
        }

        private static byte[] headerBytes(Object value) {
            if (value == null) {
                return null;
            }
            if (value instanceof byte[]) {
                return (byte[]) value;
            }
            return value.toString().getBytes(StandardCharsets.UTF_8);
        }

        /** A JSON string as its UTF-8 bytes, Avro bytes as they are, null as null. */
        private static byte[] bytes(Object v) {
            if (v == null || v instanceof byte[]) {
                return (byte[]) v;
            }
            return ((String) v).getBytes(StandardCharsets.UTF_8);
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: FloeDebezium <settings.properties>");
            System.exit(2);
        }
        Properties engineProps = new Properties();
        Properties producerProps = new Properties();
        Properties settings = load(Path.of(args[0]));
        long reportMs = Long.parseLong(settings.getProperty(REPORT_INTERVAL, "10000"));
        settings.remove(REPORT_INTERVAL);
        String format = settings.getProperty(FORMAT, "json").trim();
        settings.remove(FORMAT);
        if (!format.equals("json") && !format.equals("avro")) {
            System.err.println("FloeDebezium: " + FORMAT + " must be json or avro, not '" + format + "'");
            System.exit(2);
        }
        if (format.equals("avro") && !isSet(settings, "converter." + REGISTRY_URL)
                && !(isSet(settings, "key.converter." + REGISTRY_URL) && isSet(settings, "value.converter." + REGISTRY_URL))) {
            System.err.println("FloeDebezium: " + FORMAT + "=avro needs converter." + REGISTRY_URL
                    + " (or key.converter." + REGISTRY_URL + " and value.converter." + REGISTRY_URL + ")");
            System.exit(2);
        }
        splitSettings(settings, engineProps, producerProps);

        if (producerProps.getProperty(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG) == null) {
            System.err.println("FloeDebezium: " + PRODUCER_PREFIX + "bootstrap.servers is required");
            System.exit(2);
        }
        producerProps.putIfAbsent(ProducerConfig.CLIENT_ID_CONFIG, "floe-debezium");
        producerProps.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        producerProps.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        producerProps.putIfAbsent(ProducerConfig.ACKS_CONFIG, "all");
        producerProps.putIfAbsent(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");

        engineProps.putIfAbsent("name", "floe-debezium");
        engineProps.putIfAbsent("connector.class", "io.debezium.connector.postgresql.PostgresConnector");
        engineProps.putIfAbsent("offset.storage", "org.apache.kafka.connect.storage.MemoryOffsetBackingStore");
        engineProps.putIfAbsent("offset.flush.interval.ms", "1000");

        KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(producerProps);

        CountDownLatch finished = new CountDownLatch(1);
        AtomicBoolean engineOk = new AtomicBoolean(true);
        AtomicReference<String> engineMessage = new AtomicReference<>("");
        AtomicBoolean stopping = new AtomicBoolean(false);
        DebeziumEngine.CompletionCallback completion = (success, message, error) -> {
            engineOk.set(success);
            engineMessage.set(message == null ? "" : message);
            if (success) {
                LOG.info("engine finished: {}", message);
            }
            else {
                LOG.error("engine failed: {}", message, error);
            }
            finished.countDown();
        };

        Forwarder<?, ?> forwarder;
        DebeziumEngine<?> engine;
        if (format.equals("avro")) {
            Forwarder<byte[], byte[]> avro = new Forwarder<>(producer);
            engine = build(DebeziumEngine.create(KeyValueHeaderChangeEventFormat.of(Avro.class, Avro.class, Json.class)),
                    engineProps, avro, completion);
            forwarder = avro;
        }
        else {
            Forwarder<String, String> json = new Forwarder<>(producer);
            engine = build(DebeziumEngine.create(KeyValueHeaderChangeEventFormat.of(Json.class, Json.class, Json.class)),
                    engineProps, json, completion);
            forwarder = json;
        }
        LOG.info("keys and values serialised as {}", format.equals("avro")
                ? "Avro (io.confluent.connect.avro.AvroConverter)"
                : "JSON (org.apache.kafka.connect.json.JsonConverter)");

        Thread shutdown = new Thread(() -> {
            stopping.set(true);
            LOG.info("shutdown requested: closing the engine");
            try {
                engine.close();
                if (!finished.await(60, TimeUnit.SECONDS)) {
                    LOG.warn("engine did not report completion within 60 s");
                }
            }
            catch (IOException | InterruptedException e) {
                LOG.warn("closing the engine failed", e);
            }
            producer.close(Duration.ofSeconds(15));
            forwarder.report();
            LOG.info("stopped after forwarding {} records", forwarder.forwarded());
        }, "floe-debezium-shutdown");
        Runtime.getRuntime().addShutdownHook(shutdown);

        ExecutorService executor = Executors.newSingleThreadExecutor(r -> {
            Thread t = new Thread(r, "floe-debezium-engine");
            t.setDaemon(true);
            return t;
        });
        executor.execute(engine);
        if (reportMs > 0) {
            ScheduledExecutorService reporter = Executors.newSingleThreadScheduledExecutor(r -> {
                Thread t = new Thread(r, "floe-debezium-report");
                t.setDaemon(true);
                return t;
            });
            reporter.scheduleAtFixedRate(forwarder::report, reportMs, reportMs, TimeUnit.MILLISECONDS);
        }
        finished.await();
        if (stopping.get()) {
            // The shutdown hook owns the rest; System.exit here would deadlock on it.
            return;
        }
        // The engine stopped on its own: that is always an error for a long-running forwarder.
        LOG.error("engine stopped unexpectedly (success={}): {}", engineOk.get(), engineMessage.get());
        try {
            Runtime.getRuntime().removeShutdownHook(shutdown);
        }
        catch (IllegalStateException e) {
            return; // shutdown already in progress
        }
        producer.close(Duration.ofSeconds(15));
        System.exit(1);
    }

    /** The engine over the builder of a format, with the forwarder and the callbacks. */
    private static <K, V> DebeziumEngine<ChangeEvent<K, V>> build(DebeziumEngine.Builder<ChangeEvent<K, V>> builder,
                                                                 Properties engineProps, Forwarder<K, V> forwarder,
                                                                 DebeziumEngine.CompletionCallback completion) {
        return builder
                .using(engineProps)
                .notifying(forwarder)
                .using(new DebeziumEngine.ConnectorCallback() {
                    @Override
                    public void taskStarted() {
                        LOG.info("connector task started");
                    }

                    @Override
                    public void pollingStarted() {
                        LOG.info("polling started");
                    }
                })
                .using(completion)
                .build();
    }

    private static boolean isSet(Properties p, String name) {
        String v = p.getProperty(name);
        return v != null && !v.isBlank();
    }

    private static Properties load(Path path) throws IOException {
        Properties p = new Properties();
        try (InputStream in = Files.newInputStream(path)) {
            p.load(in);
        }
        return p;
    }

    private static void splitSettings(Properties all, Properties engine, Properties producer) {
        for (String name : all.stringPropertyNames()) {
            String value = all.getProperty(name);
            if (name.startsWith(PRODUCER_PREFIX)) {
                producer.setProperty(name.substring(PRODUCER_PREFIX.length()), value);
            }
            else {
                engine.setProperty(name, value);
            }
        }
    }
}
