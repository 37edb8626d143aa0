//! Requests recorded from the real clients (QEMU 7.2 and vdeplug4's `vde_plug`, both
//! through libvdeplug 4.0.1) decode as expected.

use bytes::BytesMut;
use vmrig_vde_net::request::{PortWish, RequestDecoder, HEADER_LEN};

fn decode(bytes: &[u8]) -> vmrig_vde_net::request::Request {
    assert!(bytes.len() > HEADER_LEN);
    let mut buf = BytesMut::from(bytes);
    let req = RequestDecoder.decode(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty(), "request not consumed whole");
    req
}

#[test]
fn qemu_request() {
    let req = decode(include_bytes!("data/qemu_request.bin"));
    assert_eq!(req.port, PortWish::Any);
    assert!(
        req.sock_path.starts_with(b"/tmp/cap/."),
        "{:?}",
        String::from_utf8_lossy(&req.sock_path)
    );
    assert!(req.description.starts_with("QEMU"), "{}", req.description);
}

#[test]
fn vde_plug_request() {
    let req = decode(include_bytes!("data/vde_plug_request.bin"));
    assert_eq!(req.port, PortWish::Any);
    assert!(req.sock_path.starts_with(b"/tmp/cap/."));
    assert!(
        req.description.starts_with("vdeplug:"),
        "{}",
        req.description
    );
}
