//! Fuzzes the switch's untrusted inputs: libvdeplug's connection request and the
//! frame path (frames from clients through the forwarding core, with faults set).
#![no_main]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use vmrig_vde_net::request::RequestDecoder;
use vmrig_vde_net::{LinkFaults, PortId, SwitchConfig, SwitchCore};

fuzz_target!(|data: &[u8]| {
    // The request, whole and split at every 7th byte.
    let mut buf = BytesMut::from(data);
    if let Ok(Some(req)) = RequestDecoder.decode_eof(&mut buf) {
        let mut again = BytesMut::new();
        req.encode(&mut again);
        let back = RequestDecoder.decode(&mut again).unwrap().unwrap();
        assert_eq!(back.port, req.port);
        assert_eq!(back.sock_path, req.sock_path);
    }
    let mut buf = BytesMut::new();
    for chunk in data.chunks(7) {
        buf.extend_from_slice(chunk);
        if RequestDecoder.decode(&mut buf).is_err() {
            break;
        }
    }

    // The frame path: the input is a sequence of (port, control, frame) records.
    let Some((&hub, mut rest)) = data.split_first() else {
        return;
    };
    let mut sw = SwitchCore::new(SwitchConfig {
        max_ports: 6,
        hub: hub & 1 == 1,
        mac_capacity: 8,
        mac_ageing: Duration::from_millis(50),
    });
    for i in 0..5 {
        sw.add_port(None, &format!("p{i}")).unwrap();
    }
    let mut rng = SmallRng::seed_from_u64(0);
    let mut out = Vec::new();
    let t0 = Instant::now();
    let mut step = 0u64;
    while rest.len() >= 3 {
        let port = PortId(u32::from(rest[0] % 7));
        let ctl = rest[1];
        let len = usize::from(rest[2]).min(rest.len() - 3);
        let frame = &rest[3..3 + len];
        rest = &rest[3 + len..];
        match ctl % 8 {
            0 => {
                let _ = sw.set_port_faults(
                    port,
                    LinkFaults {
                        up: ctl & 0x10 == 0,
                        loss_percent: f64::from(ctl >> 5) * 15.0,
                        delay: Duration::from_millis(u64::from(ctl >> 4)),
                        jitter: Duration::from_millis(u64::from(ctl & 0xf)),
                    },
                );
            }
            1 => sw.set_partition(&[vec![port], vec![PortId(u32::from(ctl >> 4))]]),
            2 => sw.set_partition(&[]),
            3 => sw.remove_port(port),
            4 => {
                let _ = sw.add_port(Some(port.0), "again");
            }
            _ => {}
        }
        step += 1;
        let now = t0 + Duration::from_millis(step * 7);
        sw.forward(port, frame, now, &mut rng, &mut out);
        for d in &out {
            assert_ne!(d.port, port, "frame reflected to its sender");
        }
        if step % 16 == 0 {
            sw.expire(now);
        }
    }
    let _ = sw.ports();
});
