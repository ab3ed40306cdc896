//! After the closing handshake both ways (RFC 6455 §5.5.1, §7.1.1), the first FIN ends a plain
//! tunnel: both sockets are closed at once (each peer gets a FIN, not a reset), instead of
//! waiting for the second peer's FIN.

mod support;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::backends::{raw_backend, switching_protocols};
use support::clients::{client_frame, handshake_request, raw_send, read_frame, read_head};
use support::{DEADLINE, Switchboard, eventually, metric, one_upstream};

fn close_payload(code: u16) -> Vec<u8> {
    code.to_be_bytes().to_vec()
}

#[tokio::test]
async fn the_backends_fin_after_both_closes_ends_the_tunnel_while_the_client_still_holds_on() {
    // The backend answers the client's Close with its own and closes TCP, as a server should.
    let (addr, live) = raw_backend(|mut stream, head| async move {
        stream
            .write_all(switching_protocols(&head).as_bytes())
            .await
            .unwrap();
        let close = tokio::time::timeout(DEADLINE, read_frame(&mut stream))
            .await
            .unwrap()
            .expect("the client's Close");
        assert_eq!(close.close_code(), Some(1000));
        // Unmasked, as a server's frame: 0x88, length 2, code 1000.
        stream.write_all(&[0x88, 0x02, 0x03, 0xe8]).await.unwrap();
    })
    .await;
    // A half-closed tunnel would otherwise wait a minute for the client's FIN.
    let sb = Switchboard::start(&one_upstream(
        &format!("\"{addr}\""),
        "[timeouts]\nhalf_closed = \"60s\"",
    ))
    .await;
    let mut client = raw_send(sb.addr, handshake_request("/", "").as_bytes()).await;
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    client
        .write_all(&client_frame(0x8, &close_payload(1000)))
        .await
        .unwrap();
    let answer = tokio::time::timeout(DEADLINE, read_frame(&mut client))
        .await
        .unwrap()
        .expect("the backend's Close");
    assert_eq!(answer.close_code(), Some(1000));

    // The client keeps its socket open and sends no FIN: the tunnel ends anyway.
    eventually("the tunnel counted as closed", || async {
        let text = sb.scrape().await;
        let closed = metric(
            &text,
            "switchboard_tunnels_closed_total",
            &[("reason", "client_closed")],
        );
        (closed == 1.0).then_some(())
    })
    .await;
    live.wait_for("backend connection done", |n| n == 0).await;
    let mut rest = Vec::new();
    let end = tokio::time::timeout(DEADLINE, client.read_to_end(&mut rest))
        .await
        .expect("the client sees the end of the stream");
    assert_eq!(
        end.expect("a FIN, not a reset"),
        0,
        "no bytes after the Close"
    );
    sb.stop().await;
}
