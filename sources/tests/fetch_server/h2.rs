//! An HTTPS server that speaks only HTTP/2 (ALPN `h2`), on hyper, for the
//! fetcher's HTTP/2 path: it serves one body, or stalls after its first
//! chunk, and counts the HTTP/2 requests it saw.

use super::TestCa;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct H2Server {
    pub port: u16,
    h2_requests: Arc<AtomicUsize>,
    // Dropped with the server: stops every connection task.
    _runtime: tokio::runtime::Runtime,
}

impl H2Server {
    /// Serves `data` at every path; with `stall_after`, sends that many
    /// bytes and then nothing more.
    pub fn start(ca: &TestCa, data: Arc<Vec<u8>>, stall_after: Option<usize>) -> H2Server {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("server runtime");
        let mut config = (*ca.server_config()).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let h2_requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&h2_requests);
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, data, counter) =
                    (acceptor.clone(), Arc::clone(&data), Arc::clone(&counter));
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        let response = respond(request, &data, stall_after, &counter);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        H2Server {
            port,
            h2_requests,
            _runtime: runtime,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    pub fn h2_requests(&self) -> usize {
        self.h2_requests.load(Ordering::SeqCst)
    }
}

fn respond(
    request: hyper::Request<Incoming>,
    data: &[u8],
    stall_after: Option<usize>,
    counter: &AtomicUsize,
) -> hyper::Response<BoxBody<Bytes, Infallible>> {
    if request.version() == hyper::Version::HTTP_2 {
        counter.fetch_add(1, Ordering::SeqCst);
    }
    let body = match stall_after {
        None => Full::new(Bytes::copy_from_slice(data)).boxed(),
        Some(n) => {
            let first = Bytes::copy_from_slice(&data[..n]);
            let frames = futures::stream::iter([Ok::<_, Infallible>(Frame::data(first))])
                .chain(futures::stream::pending());
            BodyExt::boxed(StreamBody::new(frames))
        }
    };
    hyper::Response::builder()
        .header("content-length", data.len())
        .body(body)
        .expect("response")
}
