//! Per-connection limits of the client listener, against a fake handler: waiting
//! reads per connection, requests dropped with their connection, the reserved
//! request id 0, and the closing notice as the client library reports it.

mod transport_support;

use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use ringlog::client::{Client, ClientConfig};
use ringlog::transport::client_msg::*;
use ringlog::transport::conn::FrameReader;
use ringlog::transport::frame::{FrameKind, decode_frame};
use ringlog::transport::server::ServerConfig;
use transport_support::{FakeHandler, run, start_listener, wait_until};

/// A read of `partition` past its end, waiting up to `wait_ms` for records.
fn long_poll(partition: u32, wait_ms: u32) -> ClientRequest {
    ClientRequest::Read(ReadRequest {
        partition,
        from_index: 1,
        max_records: 10,
        max_bytes: 1 << 20,
        wait_timeout_ms: wait_ms,
        any_replica: false,
    })
}

/// Sends `count` long polls (ids 1..=count) on a fresh connection.
async fn open_long_polls(addr: std::net::SocketAddr, count: u64) -> TcpStream {
    let mut wire = BytesMut::new();
    for id in 1..=count {
        encode_request(&mut wire, id, &long_poll(7, 60_000));
    }
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&wire).await.unwrap();
    s
}

/// One connection opening a hundred long polls takes at most
/// `waiting_reads_per_connection_max` of the handler's waiting room (the rest are
/// answered Overloaded), so another connection's long poll is still served.
#[test]
fn long_polls_of_one_connection_leave_room_for_others() {
    run(|| async {
        const POLLS: u64 = 100;
        let handler = Rc::new(FakeHandler::default());
        handler.reads_waiting_max.set(Some(32));
        let (addr, _) = start_listener(ServerConfig::default(), handler.clone());
        let attacker = open_long_polls(addr, POLLS).await;
        let mut reader = FrameReader::new(attacker, 1 << 20);
        let mut overloaded = 0;
        while overloaded + handler.reads_waiting.get() < POLLS {
            let frame = reader.next_frame(None, Duration::from_secs(30)).await;
            let answer = decode_response(&frame.unwrap().unwrap()).unwrap();
            assert_eq!(answer, Err(ServerError::Overloaded));
            overloaded += 1;
        }
        let mut config = ClientConfig::new(vec![addr.to_string()]);
        config.retries_max = 2;
        let victim = Client::new(config);
        let ClientRequest::Read(read) = long_poll(7, 50) else {
            unreachable!()
        };
        let answer = victim
            .read(read)
            .await
            .expect("the other connection is served");
        assert!(answer.records.is_empty());
        assert_eq!(handler.reads_waiting.get(), 16, "the attacker's waits");
    });
}

/// Closing a connection drops the requests it had in flight: waiting reads do not
/// live on for their whole timeout on behalf of a client that is gone.
#[test]
fn closing_a_connection_drops_its_waiting_reads() {
    run(|| async {
        let handler = Rc::new(FakeHandler::default());
        let (addr, stats) = start_listener(ServerConfig::default(), handler.clone());
        let attacker = open_long_polls(addr, 10).await;
        wait_until("the long polls wait", || handler.reads_waiting.get() == 10).await;
        drop(attacker);
        wait_until("the long polls are dropped", || {
            handler.reads_waiting.get() == 0
        })
        .await;
        wait_until("the connection is gone", || {
            stats.connections.open.get() == 0
        })
        .await;
    });
}

/// Request id 0 is reserved: the request is refused with a reason naming it, and the
/// connection keeps serving other ids.
#[test]
fn request_id_zero_is_refused() {
    run(|| async {
        let handler = Rc::new(FakeHandler::default());
        let (addr, _) = start_listener(ServerConfig::default(), handler.clone());
        let mut wire = BytesMut::new();
        encode_request(&mut wire, 0, &ClientRequest::Metadata);
        encode_request(&mut wire, 5, &ClientRequest::Metadata);
        let s = TcpStream::connect(addr).await.unwrap();
        let mut reader = FrameReader::new(s, 1 << 20);
        reader.inner_mut().write_all(&wire).await.unwrap();
        let t = Duration::from_secs(30);
        let refused = reader.next_frame(None, t).await.unwrap().unwrap();
        assert_eq!(refused.request_id, 0);
        match decode_response(&refused).unwrap() {
            Err(ServerError::InvalidRequest { reason }) => {
                assert!(reason.contains("request_id 0"), "{reason}")
            }
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
        let served = reader.next_frame(None, t).await.unwrap().unwrap();
        assert_eq!(served.request_id, 5);
        assert!(decode_response(&served).unwrap().is_ok());
        assert_eq!(handler.requests.get(), 1);
    });
}

/// A listener closing a connection says why in a ClosingNotice frame (a kind of its
/// own, not an answer), and the client library reports that reason.
#[test]
fn the_client_reports_the_closing_notice() {
    run(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        glommio::spawn_local(async move {
            let s = listener.accept().await.unwrap();
            let mut reader = FrameReader::new(s, 1 << 20);
            reader
                .next_frame(None, Duration::from_secs(30))
                .await
                .unwrap();
            let mut notice = BytesMut::new();
            let closing = ClosingNotice {
                cause: CloseCause::Timeout,
                reason: "the test's fake server is done".into(),
            };
            encode_closing_notice(&mut notice, &closing);
            reader.inner_mut().write_all(&notice).await.unwrap();
            reader.inner_mut().close().await.unwrap();
        })
        .detach();
        let mut config = ClientConfig::new(vec![addr.to_string()]);
        config.retries_max = 0;
        let err = Client::new(config).metadata().await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("server closed the connection (timeout): the test's fake server is done"),
            "{text}"
        );
    });
}

/// A real listener's notice: a frame of kind ClosingNotice with request id 0 whose
/// cause says what went wrong, after which the connection closes.
#[test]
fn a_protocol_error_gets_a_closing_notice() {
    run(|| async {
        let handler = Rc::new(FakeHandler::default());
        let (addr, _) = start_listener(ServerConfig::default(), handler);
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&[0xAB; 64]).await.unwrap();
        let mut received = Vec::new();
        s.read_to_end(&mut received).await.unwrap();
        let mut buf = BytesMut::from(&received[..]);
        let frame = decode_frame(&mut buf, 1 << 20, None).unwrap().unwrap();
        assert_eq!(
            (frame.kind, frame.request_id),
            (FrameKind::ClosingNotice, 0)
        );
        let notice = decode_closing_notice(&frame).unwrap();
        assert_eq!(notice.cause, CloseCause::ProtocolError);
        assert!(buf.is_empty(), "nothing after the notice");
    });
}
