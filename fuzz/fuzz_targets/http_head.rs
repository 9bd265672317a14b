//! The request head as the admission loop reads it, a growing buffer at a time: `parse_head`
//! (httparse inside our limits), then for a complete head the upgrade check and the Origin
//! check.
//!
//! Properties: a head longer than `MAX_HEAD` is never accepted, and an incomplete buffer past
//! it is refused; a complete head is exactly the bytes up to its blank line, so every prefix
//! of it is incomplete and the head alone parses the same; an accepted upgrade is a GET with a
//! key that is the base64 of 16 bytes, answered with tungstenite's accept value and nothing of
//! the request; a refusal is a 400 or a 426; an empty allow-list lets every Origin in, a list
//! only its own (any case, a trailing `/` ignored) and clients that send none.

#![no_main]

use fxproxy::http::{accept_upgrade, origin_allowed, parse_head, HeadError, MAX_HEAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_head(data) {
        Ok(None) => assert!(
            data.len() <= MAX_HEAD,
            "an incomplete head past MAX_HEAD is waited on"
        ),
        Err(HeadError::TooLarge | HeadError::Malformed(_)) => {}
        Ok(Some((request, length))) => {
            assert!(
                length <= MAX_HEAD && length <= data.len(),
                "{length} of {}",
                data.len()
            );
            assert!(data[..length].ends_with(b"\n"));
            for cut in [0, length / 2, length - 1] {
                assert!(
                    matches!(parse_head(&data[..cut]), Ok(None)),
                    "a prefix of {cut} bytes of a {length}-byte head is not incomplete"
                );
            }
            let (again, again_length) = parse_head(&data[..length]).unwrap().unwrap();
            assert_eq!(again_length, length);
            assert_eq!(
                (&again.method, &again.path),
                (&request.method, &request.path)
            );
            assert!(
                !request.method.is_empty()
                    && request.method.bytes().all(|b| b.is_ascii_uppercase())
            );
            assert!(request.path.starts_with('/'));

            match accept_upgrade(&request) {
                Ok(response) => {
                    assert_eq!(request.method, "GET");
                    let key = request.header("Sec-WebSocket-Key").expect("a key");
                    let nonce = data_encoding::BASE64
                        .decode(key.as_bytes())
                        .expect("base64");
                    assert_eq!(nonce.len(), 16);
                    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
                    let expected = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                    );
                    assert_eq!(String::from_utf8(response).unwrap(), expected);
                }
                Err(refusal) => {
                    let response = String::from_utf8(refusal.response()).unwrap();
                    let status = if refusal.wrong_version { "426" } else { "400" };
                    assert!(
                        response.starts_with(&format!("HTTP/1.1 {status} ")),
                        "{response}"
                    );
                    assert!(response.ends_with(&format!("\r\n\r\n{}\n", refusal.reason)));
                }
            }

            assert!(origin_allowed(&request, &[]));
            let listed = ["https://dash.example".to_string()];
            let allowed = origin_allowed(&request, &listed);
            match request.header("Origin") {
                None => assert!(allowed),
                Some(origin) => assert_eq!(
                    allowed,
                    origin
                        .trim_end_matches('/')
                        .eq_ignore_ascii_case("https://dash.example"),
                    "{origin:?}"
                ),
            }
        }
    }
});
