//! Answers a handler takes to send later without a task of its own
//! (`RequestHandler::take`, which the runtime uses for appends to the shard on the
//! connection's executor): they reach the client by request id, a late one is
//! answered Timeout by the connection at its deadline and then dropped, one
//! dropped unsent is answered Timeout at once, and a connection that ends while
//! answers are held lets them go without harm.

mod transport_support;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use ringlog::transport::answer::{Answer, Delivery};
use ringlog::transport::client_msg::*;
use ringlog::transport::conn::FrameReader;
use ringlog::transport::server::{ClientListener, RequestHandler, ServerConfig};
use transport_support::{run, wait_until};

/// Takes every append's answer and holds it until the test answers it.
#[derive(Default)]
struct TakingHandler {
    held: RefCell<Vec<(u64, Answer)>>,
}

impl RequestHandler for TakingHandler {
    async fn handle(&self, _request: ClientRequest) -> Result<ClientResponse, ServerError> {
        Err(ServerError::Unavailable {
            reason: "only appends are served here".into(),
        })
    }

    fn take(&self, request: ClientRequest, mut answer: Answer) -> Option<(ClientRequest, Answer)> {
        let ClientRequest::Append(append) = &request else {
            return Some((request, answer));
        };
        answer.time_out();
        let tag = append.records[0][0] as u64;
        self.held.borrow_mut().push((tag, answer));
        None
    }
}

impl TakingHandler {
    fn answer(&self, tag: u64, index: u64) -> Delivery {
        let at = self.held.borrow().iter().position(|(t, _)| *t == tag);
        let (_, answer) = self.held.borrow_mut().remove(at.expect("held"));
        answer.send(&Ok(ClientResponse::Append(AppendOk {
            first_index: index,
            last_index: index,
        })))
    }
}

type Started = (
    Rc<TakingHandler>,
    std::net::SocketAddr,
    Arc<ringlog::transport::server::ListenerStats>,
);

fn start(answer_timeout_ms: u64) -> Started {
    start_with(ServerConfig {
        answer_timeout_ms,
        ..ServerConfig::default()
    })
}

fn start_with(config: ServerConfig) -> Started {
    let handler = Rc::new(TakingHandler::default());
    let listener = ClientListener::bind("127.0.0.1:0".parse().unwrap(), config, handler.clone())
        .expect("binds");
    let (addr, stats) = (listener.local_addr().unwrap(), listener.stats());
    glommio::spawn_local(listener.run()).detach();
    (handler, addr, stats)
}

/// Encodes an append of one record, `[tag]`, with request id `tag`.
fn encode_append(out: &mut BytesMut, tag: u8) {
    let request = ClientRequest::Append(AppendRequest {
        partition: 0,
        records: vec![Bytes::from(vec![tag])],
    });
    encode_request(out, tag as u64, &request);
}

/// Sends appends tagged 1..=n (request id = tag) on one connection.
async fn send_appends(addr: std::net::SocketAddr, n: u8) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut out = BytesMut::new();
    for tag in 1..=n {
        encode_append(&mut out, tag);
    }
    stream.write_all(&out).await.unwrap();
    stream
}

async fn next_answer<R: futures_lite::AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
) -> (u64, Result<ClientResponse, ServerError>) {
    let frame = reader
        .next_frame(None, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("an answer, not the end of the stream");
    (frame.request_id, decode_response(&frame).unwrap())
}

fn appended(index: u64) -> Result<ClientResponse, ServerError> {
    Ok(ClientResponse::Append(AppendOk {
        first_index: index,
        last_index: index,
    }))
}

#[test]
fn taken_answers_reach_the_client_by_request_id_in_the_order_they_are_sent() {
    run(|| async {
        let (handler, addr, _) = start(60_000);
        let stream = send_appends(addr, 3).await;
        wait_until("three answers held", || handler.held.borrow().len() == 3).await;
        assert_eq!(handler.answer(2, 20), Delivery::Queued);
        assert_eq!(handler.answer(3, 30), Delivery::Queued);
        assert_eq!(handler.answer(1, 10), Delivery::Queued);
        let mut reader = FrameReader::new(stream, 1 << 20);
        assert_eq!(next_answer(&mut reader).await, (2, appended(20)));
        assert_eq!(next_answer(&mut reader).await, (3, appended(30)));
        assert_eq!(next_answer(&mut reader).await, (1, appended(10)));
    });
}

#[test]
fn a_late_answer_is_answered_timeout_at_its_deadline_and_then_dropped() {
    run(|| async {
        let (handler, addr, _) = start(300);
        let sent = Instant::now();
        let mut stream = send_appends(addr, 2).await;
        wait_until("two answers held", || handler.held.borrow().len() == 2).await;
        assert_eq!(handler.answer(2, 20), Delivery::Queued);
        let mut reader = FrameReader::new(&mut stream, 1 << 20);
        assert_eq!(next_answer(&mut reader).await, (2, appended(20)));
        assert_eq!(
            next_answer(&mut reader).await,
            (1, Err(ServerError::Timeout))
        );
        assert!(
            sent.elapsed() >= Duration::from_millis(300),
            "not before the deadline"
        );
        assert_eq!(
            handler.answer(1, 10),
            Delivery::TimedOut,
            "the client already heard"
        );
        drop(reader);
        // The connection still serves: the next answer is the next thing it reads.
        let mut out = BytesMut::new();
        encode_append(&mut out, 9);
        stream.write_all(&out).await.unwrap();
        wait_until("the next answer held", || handler.held.borrow().len() == 1).await;
        assert_eq!(handler.answer(9, 90), Delivery::Queued);
        let mut reader = FrameReader::new(stream, 1 << 20);
        assert_eq!(next_answer(&mut reader).await, (9, appended(90)));
    });
}

#[test]
fn an_answer_dropped_unsent_is_answered_timeout_at_once() {
    run(|| async {
        let (handler, addr, _) = start(60_000);
        let stream = send_appends(addr, 1).await;
        wait_until("the answer held", || handler.held.borrow().len() == 1).await;
        let sent = Instant::now();
        handler.held.borrow_mut().clear();
        let mut reader = FrameReader::new(stream, 1 << 20);
        assert_eq!(
            next_answer(&mut reader).await,
            (1, Err(ServerError::Timeout))
        );
        assert!(
            sent.elapsed() < Duration::from_secs(30),
            "long before the deadline"
        );
    });
}

#[test]
fn answers_held_past_their_connection_are_dropped_without_harm() {
    run(|| async {
        let (handler, addr, stats) = start(60_000);
        let mut stream = send_appends(addr, 2).await;
        wait_until("two answers held", || handler.held.borrow().len() == 2).await;
        assert_eq!(stats.connections.open.get(), 1);
        stream.shutdown(std::net::Shutdown::Both).await.unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
        wait_until("the connection ended", || stats.connections.open.get() == 0).await;
        assert_eq!(handler.answer(2, 20), Delivery::Gone);
        // Dropped unsent after the end: nothing to answer, nothing to write.
        handler.held.borrow_mut().clear();
    });
}

#[test]
fn a_timed_out_request_gives_back_its_room_on_the_connection() {
    run(|| async {
        let (handler, addr, _) = start_with(ServerConfig {
            answer_timeout_ms: 200,
            inflight_requests_max: 2,
            ..ServerConfig::default()
        });
        // Three appends: the connection takes two (its limit) and leaves the third
        // unread until one of them is over, which only their Timeout can make so
        // while the handler holds both answers.
        let mut stream = send_appends(addr, 3).await;
        wait_until("two answers held", || handler.held.borrow().len() == 2).await;
        let mut reader = FrameReader::new(&mut stream, 1 << 20);
        let mut timed_out = vec![
            next_answer(&mut reader).await,
            next_answer(&mut reader).await,
        ];
        timed_out.sort_by_key(|(id, _)| *id);
        assert_eq!(
            timed_out,
            vec![
                (1, Err(ServerError::Timeout)),
                (2, Err(ServerError::Timeout))
            ]
        );
        wait_until("the third append taken", || {
            handler.held.borrow().len() == 3
        })
        .await;
        assert_eq!(handler.answer(3, 30), Delivery::Queued);
        assert_eq!(next_answer(&mut reader).await, (3, appended(30)));
        assert_eq!(handler.answer(1, 10), Delivery::TimedOut);
        assert_eq!(handler.answer(2, 20), Delivery::TimedOut);
    });
}
