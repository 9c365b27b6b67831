//! otadata entries: the CRC table of §2.3, validity and active-entry selection of §2.4, and
//! what every §5 otadata vector selects.

mod common;

use common::*;
use ota_core::esp::otadata::{OTADATA_CRC, seq_crc};
use ota_core::esp::{OtaData, OtaEntry, OtaImgState};

#[test]
fn crc_table_of_section_2_3() {
    let table: [(u32, u32, [u8; 4]); 14] = [
        (0, 0xFFFF_FFFF, [0xff, 0xff, 0xff, 0xff]),
        (1, 0x4743_989A, [0x9a, 0x98, 0x43, 0x47]),
        (2, 0x55F6_3774, [0x74, 0x37, 0xf6, 0x55]),
        (3, 0xED4A_5011, [0x11, 0x50, 0x4a, 0xed]),
        (4, 0x709D_68A8, [0xa8, 0x68, 0x9d, 0x70]),
        (5, 0xC821_0FCD, [0xcd, 0x0f, 0x21, 0xc8]),
        (6, 0xDA94_A023, [0x23, 0xa0, 0x94, 0xda]),
        (7, 0x6228_C746, [0x46, 0xc7, 0x28, 0x62]),
        (8, 0x3A4B_D710, [0x10, 0xd7, 0x4b, 0x3a]),
        (9, 0x82F7_B075, [0x75, 0xb0, 0xf7, 0x82]),
        (10, 0x9042_1F9B, [0x9b, 0x1f, 0x42, 0x90]),
        (16, 0xAFE6_A860, [0x60, 0xa8, 0xe6, 0xaf]),
        (0xFFFF_FFFE, 0x99F8_B879, [0x79, 0xb8, 0xf8, 0x99]),
        (0xFFFF_FFFF, 0x2144_DF1C, [0x1c, 0xdf, 0x44, 0x21]),
    ];
    for (seq, crc, bytes) in table {
        assert_eq!(seq_crc(seq), crc, "seq {seq:#x}");
        assert_eq!(crc.to_le_bytes(), bytes);
        assert_eq!(
            OtaEntry::new(seq, OtaImgState::Valid).to_bytes()[28..],
            bytes
        );
    }
}

#[test]
fn crc_is_standard_crc32_xor_constant() {
    // §2.3: IDF's CRC = ISO-HDLC CRC-32 of the same 4 bytes XOR 0xDEBB20E3.
    let iso = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    for seq in [0u32, 1, 2, 77, 0x1234_5678, u32::MAX] {
        assert_eq!(seq_crc(seq), iso.checksum(&seq.to_le_bytes()) ^ 0xDEBB_20E3);
    }
    // The model's check value is what it computes over "123456789".
    let c = crc::Crc::<u32>::new(&OTADATA_CRC);
    assert_eq!(c.checksum(b"123456789"), OTADATA_CRC.check);
}

#[test]
fn entry_bytes_round_trip() {
    let raw: [u8; 32] = OTADATA_S1_NEW[0x1000..0x1020].try_into().unwrap();
    assert_eq!(
        hex::encode(raw),
        "02000000ffffffffffffffffffffffffffffffffffffffff000000007437f655"
    );
    let e = OtaEntry::from_bytes(&raw);
    assert_eq!(e, OtaEntry::new(2, OtaImgState::New));
    assert_eq!(e.to_bytes(), raw);
    assert_eq!(OtaEntry::ERASED.to_bytes(), [0xFF; 32]);
    assert_eq!(OtaEntry::from_bytes(&[0xFF; 32]), OtaEntry::ERASED);
    let mut labelled = raw;
    labelled[4..24].copy_from_slice(b"twenty bytes label!!");
    let e = OtaEntry::from_bytes(&labelled);
    assert_eq!(&e.label, b"twenty bytes label!!");
    assert_eq!(e.to_bytes(), labelled);
    assert!(e.is_valid(), "the label is not covered by the CRC");
}

#[test]
fn state_values() {
    for (raw, s) in [
        (0, OtaImgState::New),
        (1, OtaImgState::PendingVerify),
        (2, OtaImgState::Valid),
        (3, OtaImgState::Invalid),
        (4, OtaImgState::Aborted),
        (u32::MAX, OtaImgState::Undefined),
        (5, OtaImgState::Other(5)),
        (0x8000_0000, OtaImgState::Other(0x8000_0000)),
    ] {
        assert_eq!(OtaImgState::from_raw(raw), s);
        assert_eq!(s.to_raw(), raw);
    }
}

#[test]
fn validity_rules() {
    let ok = |seq, state| OtaEntry::new(seq, state);
    assert!(ok(1, OtaImgState::New).is_valid());
    assert!(ok(1, OtaImgState::PendingVerify).is_valid());
    assert!(ok(1, OtaImgState::Valid).is_valid());
    assert!(ok(1, OtaImgState::Undefined).is_valid());
    assert!(
        ok(1, OtaImgState::Other(9)).is_valid(),
        "IDF does not range-check the state"
    );
    assert!(ok(1, OtaImgState::Invalid).is_invalid() && !ok(1, OtaImgState::Invalid).is_valid());
    assert!(ok(1, OtaImgState::Aborted).is_invalid());
    assert!(
        ok(1, OtaImgState::Other(3)).is_invalid(),
        "raw 3 is INVALID however it is spelled"
    );
    assert!(OtaEntry::ERASED.is_invalid());
    let mut bad = ok(2, OtaImgState::Valid);
    bad.crc ^= 0x100;
    assert!(
        !bad.is_invalid() && !bad.is_valid(),
        "a bad CRC is not 'invalid', just not valid"
    );
    // Edge case §2.3: seq 0 with crc 0xFFFFFFFF is valid; its slot underflows as u32.
    let zero = OtaEntry::from_bytes(&entry_bytes(0, 2, 0xFFFF_FFFF));
    assert!(zero.is_valid());
    assert_eq!(zero.slot(2), (0xFFFF_FFFFu32 % 2) as u8);
    assert_eq!(zero.slot(3), (0xFFFF_FFFFu32 % 3) as u8);
    assert_eq!(zero.slot(0), 0, "no slots: no panic");
    assert_eq!(ok(17, OtaImgState::Valid).slot(16), 0);
    assert_eq!(ok(16, OtaImgState::Valid).slot(16), 15);
}

/// §5's table: (vector, active entry, seq of it, slot with two OTA slots).
#[test]
fn every_vector_selects_as_documented() {
    type Case = (&'static str, &'static [u8], Option<usize>, Option<u32>);
    let cases: [Case; 9] = [
        ("blank", OTADATA_BLANK, None, None),
        ("seq1_valid", OTADATA_SEQ1_VALID, Some(0), Some(1)),
        ("seq1_undefined", OTADATA_SEQ1_UNDEFINED, Some(0), Some(1)),
        ("seq1_new", OTADATA_SEQ1_NEW, Some(0), Some(1)),
        ("s1 new", OTADATA_S1_NEW, Some(1), Some(2)),
        ("s1 pending", OTADATA_S1_PENDING, Some(1), Some(2)),
        ("s1 aborted", OTADATA_S1_ABORTED, Some(0), Some(1)),
        ("s0 seq3, s1 seq2", OTADATA_S0SEQ3_S1SEQ2, Some(0), Some(3)),
        ("s1 bad crc", OTADATA_S1_BADCRC, Some(0), Some(1)),
    ];
    for (name, bytes, active, seq) in cases {
        assert_eq!(bytes.len(), 8192, "{name}");
        let d = OtaData::from_partition_bytes(bytes);
        assert_eq!(d.active(), active, "{name}");
        assert_eq!(d.active_entry().map(|e| e.seq), seq, "{name}");
        let slot = d.active_entry().map(|e| e.slot(2));
        let expected_slot = seq.map(|s| ((s - 1) % 2) as u8);
        assert_eq!(slot, expected_slot, "{name}");
        // Only the first 32 bytes of each sector are meaningful; the rest is erased.
        assert!(bytes[32..0x1000].iter().all(|b| *b == 0xFF), "{name}");
        assert!(bytes[0x1020..].iter().all(|b| *b == 0xFF), "{name}");
    }
    // Entry contents.
    let d = OtaData::from_partition_bytes(OTADATA_SEQ1_VALID);
    assert_eq!(
        d.entries,
        [OtaEntry::new(1, OtaImgState::Valid), OtaEntry::ERASED]
    );
    assert_eq!(
        hex::encode(&OTADATA_SEQ1_VALID[..32]),
        "01000000ffffffffffffffffffffffffffffffffffffffff020000009a984347"
    );
    let d = OtaData::from_partition_bytes(OTADATA_SEQ1_UNDEFINED);
    assert_eq!(d.entries[0], OtaEntry::new(1, OtaImgState::Undefined));
    let d = OtaData::from_partition_bytes(OTADATA_SEQ1_NEW);
    assert_eq!(d.entries[0], OtaEntry::new(1, OtaImgState::New));
    let d = OtaData::from_partition_bytes(OTADATA_S1_PENDING);
    assert_eq!(d.entries[1], OtaEntry::new(2, OtaImgState::PendingVerify));
    let d = OtaData::from_partition_bytes(OTADATA_S1_ABORTED);
    assert_eq!(d.entries[1], OtaEntry::new(2, OtaImgState::Aborted));
    let d = OtaData::from_partition_bytes(OTADATA_S0SEQ3_S1SEQ2);
    assert_eq!(
        d.entries,
        [
            OtaEntry::new(3, OtaImgState::Valid),
            OtaEntry::new(2, OtaImgState::Valid)
        ]
    );
    assert_eq!(&OTADATA_S0SEQ3_S1SEQ2[28..32], &[0x11, 0x50, 0x4a, 0xed]);
    let d = OtaData::from_partition_bytes(OTADATA_S1_BADCRC);
    assert_eq!(d.entries[1].crc, 0x55F6_3775);
    assert!(!d.entries[1].is_valid() && !d.entries[1].is_invalid());
}

#[test]
fn tie_goes_to_entry_0() {
    let e = OtaEntry::new(5, OtaImgState::Valid);
    let d = OtaData {
        entries: [e, e.with_state(OtaImgState::New)],
    };
    assert_eq!(d.active(), Some(0));
    let d = OtaData {
        entries: [
            OtaEntry::new(4, OtaImgState::Valid),
            OtaEntry::new(5, OtaImgState::Valid),
        ],
    };
    assert_eq!(d.active(), Some(1));
    // Largest seq wins even when the other entry holds a later state.
    let d = OtaData {
        entries: [
            OtaEntry::new(9, OtaImgState::New),
            OtaEntry::new(8, OtaImgState::Valid),
        ],
    };
    assert_eq!(d.active(), Some(0));
}

#[test]
fn short_partition_bytes_read_as_erased() {
    let d = OtaData::from_partition_bytes(&OTADATA_S1_NEW[..0x1010]);
    assert_eq!(d.entries[0], OtaEntry::new(1, OtaImgState::Valid));
    assert_eq!(d.entries[1], OtaEntry::ERASED);
    assert_eq!(OtaData::from_partition_bytes(&[]), OtaData::ERASED);
}
