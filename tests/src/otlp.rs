//! An OTLP/HTTP (protobuf) receiver that decodes each request as a collector does: the
//! integration tests assert what floe exports with it, and the `otlp_receiver`
//! benchmark binary stands in for a collector.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::http::read_request;

/// What the receiver was sent, decoded.
#[derive(Default)]
struct Received {
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
}

/// An OTLP/HTTP (protobuf) receiver: `/v1/traces` and `/v1/metrics`.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    addr: std::net::SocketAddr,
    /// The accept loop; aborted (the port closed) by [`Receiver::stop`].
    accepting: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
    /// While true, every request is answered 503 (and counted in `refused`).
    pub down: Arc<AtomicBool>,
    pub refused: Arc<AtomicUsize>,
    received: Arc<Mutex<Received>>,
    /// Bytes of the request bodies received (the protobuf on the wire).
    pub bytes: Arc<AtomicUsize>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Receiver::start_on("127.0.0.1:0").await
    }

    /// A receiver listening on `addr` (port 0: any free port).
    pub async fn start_on(addr: &str) -> Receiver {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let receiver = Receiver {
            url: format!("http://{addr}"),
            addr,
            accepting: Arc::default(),
            down: Arc::default(),
            refused: Arc::default(),
            received: Arc::default(),
            bytes: Arc::default(),
        };
        receiver.accept(listener);
        receiver
    }

    fn accept(&self, listener: TcpListener) {
        let r = self.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(r.clone().serve(stream));
            }
        });
        *self.accepting.lock().unwrap() = Some(task);
    }

    /// Closes the port: exports are refused at connect.
    pub async fn stop(&self) {
        let task = self.accepting.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        let listener = TcpListener::bind(self.addr).await.expect("the port again");
        self.accept(listener);
    }

    async fn serve(self, mut client: TcpStream) {
        let Some(request) = read_request(&mut client).await else {
            return;
        };
        let end = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&request[..end]).into_owned();
        let body = &request[end..];
        let path = head.split(' ').nth(1).unwrap_or_default().to_string();
        let status = if self.down.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            "503 Service Unavailable"
        } else {
            assert!(
                head.to_ascii_lowercase()
                    .contains("content-type: application/x-protobuf"),
                "{head}"
            );
            self.bytes.fetch_add(body.len(), Ordering::SeqCst);
            let mut received = self.received.lock().unwrap();
            match path.as_str() {
                "/v1/traces" => received
                    .traces
                    .push(ExportTraceServiceRequest::decode(body).expect("a trace export")),
                "/v1/metrics" => received
                    .metrics
                    .push(ExportMetricsServiceRequest::decode(body).expect("a metrics export")),
                other => panic!("unexpected OTLP path {other}"),
            }
            "200 OK"
        };
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let _ = client.write_all(answer.as_bytes()).await;
    }

    /// Export requests received so far: (trace requests, metric requests).
    pub fn requests(&self) -> (usize, usize) {
        let received = self.received.lock().unwrap();
        (received.traces.len(), received.metrics.len())
    }

    /// Every span received so far, with its resource's `service.name`.
    pub fn spans(&self) -> Vec<(String, Span)> {
        let received = self.received.lock().unwrap();
        let mut out = Vec::new();
        for request in &received.traces {
            for rs in &request.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| string(&r.attributes, "service.name"))
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    out.extend(ss.spans.iter().map(|s| (service.clone(), s.clone())));
                }
            }
        }
        out
    }

    /// The latest value of each monotonic sum (summed over its attribute sets) and the
    /// `service.name` of the exports that carried it.
    pub fn sums(&self) -> (HashMap<String, i64>, BTreeSet<String>) {
        let received = self.received.lock().unwrap();
        let mut sums = HashMap::new();
        let mut services = BTreeSet::new();
        for request in &received.metrics {
            for rm in &request.resource_metrics {
                if let Some(r) = &rm.resource {
                    services.extend(string(&r.attributes, "service.name"));
                }
                for sm in &rm.scope_metrics {
                    for m in &sm.metrics {
                        let points = match &m.data {
                            Some(metric::Data::Sum(s)) => &s.data_points,
                            Some(metric::Data::Histogram(h)) => {
                                let count = h.data_points.iter().map(|p| p.count as i64).sum();
                                sums.insert(format!("{} count", m.name), count);
                                continue;
                            }
                            _ => continue,
                        };
                        let total = points
                            .iter()
                            .map(|p| match p.value {
                                Some(number_data_point::Value::AsInt(v)) => v,
                                Some(number_data_point::Value::AsDouble(v)) => v as i64,
                                None => 0,
                            })
                            .sum();
                        // Later exports are cumulative: the last one wins.
                        sums.insert(m.name.clone(), total);
                    }
                }
            }
        }
        (sums, services)
    }
}

fn string(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match &value.value {
        Some(any_value::Value::StringValue(s)) => Some(s.clone()),
        Some(any_value::Value::IntValue(i)) => Some(i.to_string()),
        Some(other) => Some(format!("{other:?}")),
        None => None,
    }
}

pub fn attr(span: &Span, key: &str) -> Option<String> {
    string(&span.attributes, key)
}
