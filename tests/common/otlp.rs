//! An OTLP collector on loopback (HTTP and gRPC) that decodes the traces it is sent with the
//! official protobuf definitions, and keeps their spans.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{Buf as _, Bytes};
use http_body_util::{BodyExt as _, Full};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

/// A span as the collector got it, with the `service.name` of who sent it.
#[derive(Debug, Clone)]
pub struct Received {
    pub service: String,
    pub span: Span,
}

impl Received {
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn attribute(&self, key: &str) -> Option<String> {
        let value = self.span.attributes.iter().find(|a| a.key == key)?.value.as_ref()?.value.as_ref()?;
        Some(match value {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            AnyValue::ArrayValue(a) => format!("{:?}", a.values),
            other => format!("{other:?}"),
        })
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP collector on loopback that keeps every span it is sent.
#[derive(Clone, Default)]
pub struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    fn keep(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|span| Received { service: service.clone(), span }));
            }
        }
    }

    /// The spans named `name`.
    pub fn named(&self, name: &str) -> Vec<Received> {
        self.spans().into_iter().filter(|s| s.span.name == name).collect()
    }

    /// The spans whose parent is `parent`.
    pub fn children(&self, parent: &Received) -> Vec<Received> {
        self.spans().into_iter().filter(|s| s.span.parent_span_id == parent.span.span_id).collect()
    }

    /// OTLP over HTTP: protobuf bodies POSTed to `/v1/traces`.
    pub async fn start_http(&self) -> SocketAddr {
        self.listen(|collector, stream| async move {
            let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let collector = collector.clone();
                async move {
                    assert_eq!(request.uri().path(), "/v1/traces");
                    assert_eq!(request.headers()["content-type"], "application/x-protobuf");
                    let body = request.into_body().collect().await?.to_bytes();
                    collector.keep(ExportTraceServiceRequest::decode(body).expect("an OTLP trace export"));
                    let answer = ExportTraceServiceResponse::default().encode_to_vec();
                    Ok::<_, hyper::Error>(
                        http::Response::builder()
                            .header("content-type", "application/x-protobuf")
                            .body(Full::new(Bytes::from(answer)))
                            .unwrap(),
                    )
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        })
        .await
    }

    /// OTLP over gRPC: `TraceService/Export` calls, each a length-prefixed protobuf message.
    pub async fn start_grpc(&self) -> SocketAddr {
        self.listen(|collector, stream| async move {
            let Ok(mut connection) = h2::server::handshake(stream).await else { return };
            // The connection is driven by `accept`; each call is read and answered beside it.
            while let Some(Ok((request, respond))) = connection.accept().await {
                tokio::spawn(collector.clone().export_call(request, respond));
            }
        })
        .await
    }

    /// Listens on a loopback port, serving each connection with `serve` in a task of its own.
    async fn listen<F, Fut>(&self, serve: F) -> SocketAddr
    where
        F: Fn(Collector, tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(collector.clone(), stream));
            }
        });
        addr
    }

    /// One gRPC `TraceService/Export` call: one length-prefixed protobuf message in, an
    /// empty answer and `grpc-status: 0` out.
    async fn export_call(self, request: http::Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>) {
        assert_eq!(request.uri().path(), "/opentelemetry.proto.collector.trace.v1.TraceService/Export");
        let mut body = request.into_body();
        let mut message = Vec::new();
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            message.extend_from_slice(&chunk);
        }
        let mut framed = Bytes::from(message);
        assert_eq!(framed.get_u8(), 0, "an uncompressed gRPC message");
        let length = framed.get_u32() as usize;
        assert_eq!(length, framed.len(), "one whole gRPC message");
        self.keep(ExportTraceServiceRequest::decode(framed).expect("an OTLP trace export"));
        let head = http::Response::builder().header("content-type", "application/grpc").body(()).unwrap();
        let Ok(mut stream) = respond.send_response(head, false) else { return };
        let answer = ExportTraceServiceResponse::default().encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(answer.len() as u32).to_be_bytes());
        framed.extend_from_slice(&answer);
        let _ = stream.send_data(Bytes::from(framed), false);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let _ = stream.send_trailers(trailers);
    }
}
