//! The partition-table parser: never panics; what parses re-encodes to a table that parses alike.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ota_core::esp::PartitionTable;
use ota_core::esp::partition::Md5Policy;

fuzz_target!(|data: &[u8]| {
    for policy in [Md5Policy::Required, Md5Policy::Optional] {
        if let Ok(t) = PartitionTable::parse(data, policy, Some(16 << 20)) {
            let again = PartitionTable::parse(&t.to_bytes(), Md5Policy::Required, Some(16 << 20)).expect("our own output parses");
            assert_eq!(again.partitions(), t.partitions());
        }
    }
});
