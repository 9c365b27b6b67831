//! The device engine fed arbitrary control and data writes from two clients on a RAM flash:
//! never panics and never writes the running factory app.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ota_core::device::{ClientId, DeviceConfig, UpdateEngine};
use ota_core::esp::partition::Md5Policy;
use ota_core::esp::{Chip, PartitionTable};
use ota_core::time::Instant;

const TABLE: &[u8] = include_bytes!("../../crates/ota-core/tests/fixtures/partitions_two_ota.bin");
const FACTORY: &[u8] = include_bytes!("../../crates/ota-core/tests/fixtures/tiny_c3_app.bin");

fuzz_target!(|data: &[u8]| {
    let mut mem = vec![0xFFu8; 4 << 20];
    mem[0x8000..0x8000 + TABLE.len()].copy_from_slice(TABLE);
    mem[0x10000..0x10000 + FACTORY.len()].copy_from_slice(FACTORY);
    let table = PartitionTable::parse(TABLE, Md5Policy::Required, None).unwrap();
    let factory = *table.factory().unwrap();
    let mut flash = virtual_esp32::Flash::in_memory(mem);
    let mut engine = UpdateEngine::new(&mut flash, DeviceConfig::new(Chip::Esp32c3), table, factory).unwrap();
    let mut buf = [0u8; 600];
    // Each record: [kind, client, len, bytes...].
    let mut rest = data;
    let mut now = 0;
    while let [kind, client, len, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        let (bytes, next) = tail.split_at(n);
        rest = next;
        now += 7;
        let c = ClientId((*client % 3) as u16);
        match kind % 5 {
            0 => engine.handle_control_write(&mut flash, c, bytes, Instant(now)),
            1 => { let _ = engine.handle_data_write(&mut flash, c, bytes, Instant(now)); }
            2 => engine.handle_mtu(c, 23 + *len as u16 * 2),
            3 => engine.handle_disconnected(c),
            _ => engine.handle_tick(Instant(now + *len as u64 * 10)),
        }
        while engine.poll_notification(&mut buf).is_some() {}
        while engine.poll_event().is_some() {}
    }
    assert_eq!(&flash.bytes()[0x10000..0x10000 + FACTORY.len()], FACTORY);
});
