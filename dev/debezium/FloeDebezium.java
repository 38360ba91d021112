/*
 * floe dev stack: the real Debezium 3.6.3 embedded engine (PostgreSQL connector),
 * forwarding every change event to a Kafka-protocol broker (tansu in the dev stack).
 *
 * Usage: java -cp "classes:libs/*" FloeDebezium <settings.properties>
 *
 * The properties file (written by dev/stack.sh) holds:
 *   floe.producer.<name>=...   KafkaProducer settings (prefix stripped); bootstrap.servers is required
 *   floe.report.interval.ms    how often to log the number of records forwarded (default 10000, 0: never)
 *   anything else              Debezium engine / connector / converter settings, passed as is
 *
 * Records are serialised by Kafka Connect's JsonConverter exactly as a Kafka Connect worker
 * would (DebeziumEngine with KeyValueHeaderChangeEventFormat.of(Json, Json, Json)); the key and
 * value strings are sent as their UTF-8 bytes, a null key or value stays null (tombstones,
 * truncate events), headers are forwarded. The producer uses Kafka's default partitioner
 * (murmur2 of the key bytes), so every key lands on the partition Kafka Connect would pick.
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
import io.debezium.engine.format.Json;
import io.debezium.engine.format.KeyValueHeaderChangeEventFormat;

public final class FloeDebezium {

    private static final Logger LOG = LoggerFactory.getLogger(FloeDebezium.class);
    private static final String PRODUCER_PREFIX = "floe.producer.";
    private static final String REPORT_INTERVAL = "floe.report.interval.ms";

    private FloeDebezium() {
    }

    /** Sends each batch to Kafka, waits for every ack, and only then commits the offsets. */
    static final class Forwarder implements DebeziumEngine.ChangeConsumer<ChangeEvent<String, String>> {
        private final KafkaProducer<byte[], byte[]> producer;
        private final AtomicLong forwarded = new AtomicLong();
        private final AtomicLong nullValues = new AtomicLong();
        private long reported;

        Forwarder(KafkaProducer<byte[], byte[]> producer) {
            this.producer = producer;
        }

        @Override
        public void handleBatch(List<ChangeEvent<String, String>> records,
                                DebeziumEngine.RecordCommitter<ChangeEvent<String, String>> committer)
                throws InterruptedException {
            List<Future<RecordMetadata>> acks = new ArrayList<>(records.size());
            for (ChangeEvent<String, String> record : records) {
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
            for (ChangeEvent<String, String> record : records) {
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

        private static ProducerRecord<byte[], byte[]> toProducerRecord(ChangeEvent<String, String> record) {
            RecordHeaders headers = new RecordHeaders();
            List<Header<Object>> eventHeaders = record.headers();
            if (eventHeaders != null) {
                for (Header<Object> h : eventHeaders) {
                    headers.add(h.getKey(), headerBytes(h.getValue()));
                }
            }
            return new ProducerRecord<>(record.destination(), record.partition(), utf8(record.key()),
                    utf8(record.value()), headers);
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

        private static byte[] utf8(String s) {
            return s == null ? null : s.getBytes(StandardCharsets.UTF_8);
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
        Forwarder forwarder = new Forwarder(producer);

        CountDownLatch finished = new CountDownLatch(1);
        AtomicBoolean engineOk = new AtomicBoolean(true);
        AtomicReference<String> engineMessage = new AtomicReference<>("");
        AtomicBoolean stopping = new AtomicBoolean(false);

        DebeziumEngine<ChangeEvent<String, String>> engine = DebeziumEngine
                .create(KeyValueHeaderChangeEventFormat.of(Json.class, Json.class, Json.class))
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
                .using((success, message, error) -> {
                    engineOk.set(success);
                    engineMessage.set(message == null ? "" : message);
                    if (success) {
                        LOG.info("engine finished: {}", message);
                    }
                    else {
                        LOG.error("engine failed: {}", message, error);
                    }
                    finished.countDown();
                })
                .build();

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
