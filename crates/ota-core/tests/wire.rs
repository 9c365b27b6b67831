//! Byte layouts of the fast protocol, as docs/protocol.md gives them.

use ota_core::protocol::fast::{
    Command, Info, Response, Resumable, SlotInfo, SlotStateCode, decode_chunk, encode_chunk_header,
};
use ota_core::protocol::{
    CONTROL_CHAR_UUID, DATA_CHAR_UUID, OTA_SERVICE_UUID, Reason, legacy, max_value_len,
    uuid_to_le_bytes,
};
use proptest::prelude::*;

fn enc_cmd(c: &Command) -> Vec<u8> {
    let mut b = [0u8; 64];
    let n = c.encode(&mut b).unwrap();
    b[..n].to_vec()
}

fn enc(r: &Response) -> Vec<u8> {
    let mut b = [0u8; Response::MAX_LEN];
    let n = r.encode(&mut b).unwrap();
    b[..n].to_vec()
}

#[test]
fn seed_uuids_and_opcodes_are_kept() {
    assert_eq!(
        format!("{OTA_SERVICE_UUID:032x}"),
        "d6f1d96d594c4c53b1c6244a1dfde6d8"
    );
    assert_eq!(
        format!("{CONTROL_CHAR_UUID:032x}"),
        "7ad671aa21c046a4b722270e3ae3d830"
    );
    assert_eq!(
        format!("{DATA_CHAR_UUID:032x}"),
        "234088881f404cd89b89ca8d45f8a5b0"
    );
    assert_eq!(uuid_to_le_bytes(OTA_SERVICE_UUID)[0], 0xd8);
    assert_eq!(
        [
            legacy::REQUEST,
            legacy::REQUEST_ACK,
            legacy::REQUEST_NAK,
            legacy::DONE,
            legacy::DONE_ACK,
            legacy::DONE_NAK
        ],
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(max_value_len(23), 20);
    assert_eq!(max_value_len(517), 512);
}

#[test]
fn command_layouts() {
    let begin = Command::Begin {
        size: 0x0001_0203,
        sha256: [0xAB; 32],
        flags: 0,
        stream: None,
    };
    let bytes = enc_cmd(&begin);
    assert_eq!(bytes.len(), 38);
    assert_eq!(&bytes[..5], &[0x11, 0x03, 0x02, 0x01, 0x00]);
    assert_eq!(bytes[37], 0);
    assert_eq!(Command::decode(&bytes), Ok(begin));
    for (c, op) in [
        (Command::Info, 0x10),
        (Command::End, 0x12),
        (Command::Reboot, 0x13),
        (Command::Confirm, 0x14),
        (Command::Abort, 0x15),
        (Command::Status, 0x16),
    ] {
        assert_eq!(enc_cmd(&c), vec![op]);
        assert_eq!(Command::decode(&[op]), Ok(c));
        assert!(
            Command::decode(&[op, 0]).is_err(),
            "trailing bytes are refused"
        );
    }
    assert!(Command::decode(&[]).is_err());
    assert!(
        Command::decode(&[0x05]).is_err(),
        "legacy codes are not fast commands"
    );
}

#[test]
fn response_layouts() {
    assert_eq!(
        enc(&Response::Ack { next: 0x1234 }),
        [0xA0, 0x34, 0x12, 0, 0]
    );
    assert_eq!(enc(&Response::Rewind { next: 7 }), [0xA1, 7, 0, 0, 0]);
    assert_eq!(enc(&Response::EndOk { slot: 1 }), [0x92, 1]);
    assert_eq!(
        enc(&Response::BeginOk {
            resume_offset: 0x100,
            chunk_size: 240,
            window: 3840,
            slot: 0
        }),
        [0x91, 0x00, 0x01, 0, 0, 240, 0, 0x00, 0x0F, 0, 0, 0]
    );
    assert_eq!(
        enc(&Response::Error {
            opcode: 0x11,
            reason: Reason::ImageTooLarge,
            detail: 0x10_0000
        }),
        [0xEE, 0x11, 0x05, 0x00, 0x00, 0x10, 0x00]
    );
    for r in [Response::RebootOk, Response::ConfirmOk, Response::AbortOk] {
        assert_eq!(Response::decode(&enc(&r)), Ok(r));
    }
}

fn info() -> Info {
    let mut slots = heapless::Vec::new();
    slots
        .push(SlotInfo {
            slot: 0xFF,
            state: SlotStateCode::Unused,
            running: false,
            boot: false,
        })
        .unwrap();
    slots
        .push(SlotInfo {
            slot: 0,
            state: SlotStateCode::PendingVerify,
            running: true,
            boot: true,
        })
        .unwrap();
    Info {
        protocol_version: 1,
        chip_id: 5,
        running_slot: 0,
        app_name: "app".try_into().unwrap(),
        app_version: "2.0.0".try_into().unwrap(),
        max_image_size: 0x10_0000,
        chunk_size: 240,
        window: 3840,
        slots,
        resumable: Some(Resumable {
            size: 1000,
            sha256: [1; 32],
            offset: 480,
        }),
        features: ota_core::protocol::fast::features::COMPRESSED
            | ota_core::protocol::fast::features::SIGNATURES_REQUIRED,
        trusted_keys: heapless::Vec::from_slice(&[[9; 8]]).unwrap(),
    }
}

#[test]
fn info_round_trips_and_states_its_length() {
    let bytes = enc(&Response::Info(info()));
    assert_eq!(bytes[0], 0x90);
    assert_eq!(
        u16::from_le_bytes([bytes[1], bytes[2]]) as usize,
        bytes.len()
    );
    assert_eq!(Response::decode(&bytes), Ok(Response::Info(info())));
    // Cut by a small MTU: refused, so the client reads OTA Control instead.
    assert!(Response::decode(&bytes[..20]).is_err());
}

#[test]
fn info_from_older_devices_without_later_fields_and_from_a_later_one_with_more_all_decode() {
    let v4 = enc(&Response::Info(info()));
    let with_len = |mut b: Vec<u8>| {
        let n = b.len() as u16;
        b[1..3].copy_from_slice(&n.to_le_bytes());
        b
    };
    // v3: no trusted keys (their count and one fingerprint).
    let v3 = with_len(v4[..v4.len() - 9].to_vec());
    let Ok(Response::Info(old)) = Response::decode(&v3) else {
        panic!("a v3 INFO decodes")
    };
    assert_eq!(old.features, info().features);
    assert!(old.trusted_keys.is_empty());
    // v2: no features byte either.
    let v2 = with_len(v3[..v3.len() - 1].to_vec());
    let Ok(Response::Info(old)) = Response::decode(&v2) else {
        panic!("a v2 INFO decodes")
    };
    assert_eq!(old.features, 0);
    assert_eq!(old.resumable, info().resumable);
    // A later version appends a field: skipped.
    let mut later = v4.clone();
    later.extend_from_slice(&[7, 7]);
    let later = with_len(later);
    assert_eq!(Response::decode(&later), Ok(Response::Info(info())));
}

#[test]
fn begin_carries_the_stream_exactly_when_compressed() {
    use ota_core::protocol::fast::{BEGIN_COMPRESSED_LEN, BEGIN_LEN, Stream, begin_flags};
    let plain = Command::Begin {
        size: 1000,
        sha256: [3; 32],
        flags: begin_flags::REBOOT_AFTER_END,
        stream: None,
    };
    let stream = Stream::of(b"deflate stream");
    let compressed = Command::Begin {
        size: 1000,
        sha256: [3; 32],
        flags: begin_flags::REBOOT_AFTER_END | begin_flags::COMPRESSED,
        stream: Some(stream),
    };
    let (p, c) = (enc_cmd(&plain), enc_cmd(&compressed));
    assert_eq!((p.len(), c.len()), (BEGIN_LEN, BEGIN_COMPRESSED_LEN));
    assert_eq!(Command::decode(&p), Ok(plain));
    assert_eq!(Command::decode(&c), Ok(compressed));
    assert_eq!(&c[38..42], &14u32.to_le_bytes());
    // zlib's crc32 of the same bytes.
    assert_eq!(
        stream.crc32, 0x4f40_a8c4,
        "Python's zlib.crc32(b'deflate stream')"
    );
    // The flag without the stream, or the stream without the flag: malformed.
    let mut flag_only = p.clone();
    flag_only[37] |= begin_flags::COMPRESSED;
    assert!(Command::decode(&flag_only).is_err());
    let mut stream_only = c.clone();
    stream_only[37] &= !begin_flags::COMPRESSED;
    assert!(Command::decode(&stream_only).is_err());
}

#[test]
fn info_with_unknown_slot_flag_bits_is_refused() {
    // Found by the `wire` fuzz target: decode(encode(x)) must be x.
    let mut bytes = enc(&Response::Info(info()));
    // The last slot's flags, before the resumable session, the features byte and the keys.
    let flags_at = bytes.len() - 9 - 1 - 41 - 1;
    bytes[flags_at] |= 0x40;
    assert!(Response::decode(&bytes).is_err());
}

#[test]
fn chunks_carry_their_offset() {
    let mut w = encode_chunk_header(0x0102_0304).to_vec();
    w.extend_from_slice(b"abc");
    assert_eq!(w[..4], [4, 3, 2, 1]);
    assert_eq!(decode_chunk(&w), Ok((0x0102_0304, &b"abc"[..])));
    assert!(
        decode_chunk(&w[..4]).is_err(),
        "a chunk needs at least one byte"
    );
}

#[test]
fn every_reason_has_a_code_a_hint_and_an_att_error() {
    for r in Reason::ALL {
        assert_eq!(Reason::from_code(r.code()), Some(*r));
        assert_eq!(Reason::from_att_error(r.att_error()), Some(*r));
        assert!(
            r.att_error() >= 0x80 && r.att_error() <= 0x9F,
            "ATT application error range"
        );
        assert!(!r.hint().is_empty());
    }
}

proptest! {
    #[test]
    fn decoders_never_panic_and_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(c) = Command::decode(&bytes) {
            prop_assert_eq!(enc_cmd(&c), bytes.clone());
        }
        if let Ok(r) = Response::decode(&bytes) {
            prop_assert_eq!(enc(&r), bytes);
        }
    }
}

#[test]
fn which_response_answers_which_command() {
    use ota_core::protocol::fast::{Response, is_cut_info, op};
    let ack = Response::Ack { next: 10 };
    assert!(ack.answers(op::STATUS));
    assert!(
        !ack.answers(op::BEGIN),
        "an ACK during a transfer answers no BEGIN"
    );
    assert!(!Response::Rewind { next: 0 }.answers(op::STATUS));
    let err = Response::Error {
        opcode: op::BEGIN,
        reason: ota_core::protocol::Reason::Busy,
        detail: 0,
    };
    assert!(err.answers(op::BEGIN) && !err.answers(op::END));
    assert!(Response::RebootOk.answers(op::REBOOT));
    // INFO cut by a 23-byte MTU: 20 bytes of a longer value.
    let mut cut = [0u8; 20];
    cut[0] = op::RESPONSE_FLAG | op::INFO;
    assert!(is_cut_info(&cut));
    assert!(!is_cut_info(&[op::RESPONSE_FLAG | op::REBOOT]));
}
